//! `cargo fuzz run daemon_config`: see `wfrun_runtime::fuzzing::daemon_config`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wfrun_runtime::fuzzing::daemon_config(data));
