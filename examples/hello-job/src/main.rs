//! A command job: any `fn main` built for wasm32-wasip2 runs under `wfrun exec`.
//!
//! `wfrun exec hello-job.wasm -- Ada Grace` prints `Hello, Ada!` and
//! `Hello, Grace!`. `--exit N` exits with status N, to show how a job's own
//! exit status passes through. `GREETING` in the environment (granted with
//! `--env GREETING=Hi`) changes the salutation.

use std::process::ExitCode;

fn main() -> ExitCode {
    let salutation = std::env::var("GREETING").unwrap_or_else(|_| "Hello".to_owned());
    let mut args = std::env::args().skip(1);
    let mut greeted = 0;
    while let Some(arg) = args.next() {
        if arg == "--exit" {
            let code = args.next().and_then(|c| c.parse::<u8>().ok()).unwrap_or(1);
            return ExitCode::from(code);
        }
        println!("{salutation}, {arg}!");
        greeted += 1;
    }
    if greeted == 0 {
        println!("{salutation}, world!");
    }
    eprintln!("greeted {} name(s)", greeted.max(1));
    ExitCode::SUCCESS
}
