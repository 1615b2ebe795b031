//! `cargo fuzz run component_shape`: see `wfrun_runtime::fuzzing::component_shape`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wfrun_runtime::fuzzing::component_shape(data));
