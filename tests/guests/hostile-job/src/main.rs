//! A command job that misbehaves on request: `hostile-job MODE`.

use std::hint::black_box;

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    match mode.as_str() {
        "loop" => {
            let mut i: u64 = 0;
            loop {
                i = black_box(i.wrapping_add(1));
            }
        }
        "stderr" => loop {
            eprintln!("{}", "flood ".repeat(100));
        },
        // Many small writes: more than the host queues for its echo.
        "count" => {
            for i in 1..=20_000 {
                println!("line {i}");
            }
            eprintln!("counted");
        }
        "args" => println!("{}", std::env::args().collect::<Vec<_>>().join("|")),
        "exit" => std::process::exit(1),
        "panic" => panic!("job panics on purpose"),
        _ => println!("ok"),
    }
}
