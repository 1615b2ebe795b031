//! Replays the saved fuzz corpus (`fuzz/corpus/TARGET/`) and any findings
//! (`fuzz/artifacts/TARGET/`) through the same functions the `cargo fuzz`
//! targets call, on stable: a finding fixed once stays fixed in CI.

use std::path::Path;

#[test]
fn every_saved_fuzz_input_is_handled_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut replayed = 0;
    for (name, target) in wfrun_runtime::fuzzing::TARGETS {
        for kind in ["corpus", "artifacts"] {
            let Ok(entries) = std::fs::read_dir(root.join(kind).join(name)) else { continue };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "fuzz target {name} panics on {}", path.display());
                replayed += 1;
            }
        }
        assert!(root.join("fuzz_targets").join(format!("{name}.rs")).is_file(), "a cargo fuzz target for {name}");
    }
    assert!(replayed >= wfrun_runtime::fuzzing::TARGETS.len(), "each target has a seed ({replayed} inputs)");
}
