//! `cargo fuzz run workflow_toml`: see `wfrun_runtime::fuzzing::workflow_toml`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wfrun_runtime::fuzzing::workflow_toml(data));
