//! A command job: any `fn main` built for wasm32-wasip2 runs under `wfrun exec`.
//!
//! `wfrun exec hello-job.wasm -- Ada Grace` prints `Hello, Ada!` and
//! `Hello, Grace!`. `--fail` exits with a failure status, to show how a job's
//! own exit status passes through (WASI 0.2 carries success or failure, so a
//! failing Rust job exits 1, as under `wasmtime run`). `GREETING` in the
//! environment (granted with `--env GREETING=Hi`) changes the salutation.

use std::process::ExitCode;

fn main() -> ExitCode {
    let salutation = std::env::var("GREETING").unwrap_or_else(|_| "Hello".to_owned());
    let mut greeted = 0;
    for arg in std::env::args().skip(1) {
        if arg == "--fail" {
            eprintln!("failing on request");
            return ExitCode::FAILURE;
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
