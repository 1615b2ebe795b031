//! The `wfrun` binary: everything lives in [`wfrun_runtime::cli`].

fn main() -> std::process::ExitCode {
    wfrun_runtime::cli::main()
}
