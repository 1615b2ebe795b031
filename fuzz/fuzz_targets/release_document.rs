//! `cargo fuzz run release_document`: see `wfrun_runtime::fuzzing::release_document`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wfrun_runtime::fuzzing::release_document(data));
