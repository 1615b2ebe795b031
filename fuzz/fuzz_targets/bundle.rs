//! `cargo fuzz run bundle`: see `wfrun_runtime::fuzzing::bundle`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wfrun_runtime::fuzzing::bundle(data));
