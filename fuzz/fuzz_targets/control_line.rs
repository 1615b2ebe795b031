//! `cargo fuzz run control_line`: see `wfrun_runtime::fuzzing::control_line`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wfrun_runtime::fuzzing::control_line(data));
