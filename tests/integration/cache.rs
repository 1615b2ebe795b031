//! The compiled-artifact cache: the second load of a component does not
//! compile, and an entry that is corrupt, truncated or made by another
//! engine configuration is detected, removed and rebuilt, never run.

use crate::exec::wfrun;
use crate::guests::guest;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use wfrun_runtime::bundle::Bundle;
use wfrun_runtime::outcome::RunStatus;
use wfrun_runtime::sandbox::{EngineOptions, Origin, Program, RunRequest, Sandbox};

fn sandbox(cache: &Path, fuel_metering: bool) -> Sandbox {
    Sandbox::new(EngineOptions { fuel_metering, cache_dir: Some(cache.to_path_buf()), ..EngineOptions::default() })
        .unwrap()
}

fn load(sandbox: &Sandbox) -> Program {
    sandbox.load(Bundle::read(guest("hello")).unwrap().bytes(), "hello.wasm").unwrap()
}

async fn greets(sandbox: &Sandbox, program: &Program) {
    let request = RunRequest { input: json!({"name": "cache"}).to_string(), ..RunRequest::default() };
    let report = sandbox.run(program, &request).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:?}");
    assert_eq!(report.output.unwrap().get(), r#"{"greeting":"Hello, cache!"}"#);
}

fn only_entry(dir: &Path) -> PathBuf {
    let entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries.into_iter().next().unwrap()
}

#[tokio::test]
async fn the_second_load_loads_instead_of_compiling() {
    let temp = tempfile::tempdir().unwrap();
    let dir = &temp.path().join("cache");
    let first = sandbox(dir, true);
    assert_eq!(load(&first).origin(), Origin::Compiled);
    // A new engine, as in a new process.
    let second = sandbox(dir, true);
    let program = load(&second);
    assert_eq!(program.origin(), Origin::Cached);
    greets(&second, &program).await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(only_entry(dir)).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(dir).unwrap().permissions().mode() & 0o777, 0o700);
    }
}

#[tokio::test]
async fn corrupt_and_truncated_entries_are_rebuilt_never_run() {
    let dir = tempfile::tempdir().unwrap();
    load(&sandbox(dir.path(), true));
    let entry = only_entry(dir.path());
    let whole = std::fs::read(&entry).unwrap();

    let mut flipped = whole.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    for broken in [flipped, whole[..whole.len() / 3].to_vec(), Vec::new()] {
        std::fs::write(&entry, &broken).unwrap();
        let fresh = sandbox(dir.path(), true);
        let program = load(&fresh);
        assert_eq!(program.origin(), Origin::Rebuilt);
        greets(&fresh, &program).await;
        assert_eq!(std::fs::read(&entry).unwrap(), whole, "the entry was replaced by a sound one");
    }
}

#[tokio::test]
async fn an_entry_from_another_engine_configuration_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    load(&sandbox(dir.path(), true));
    let metered = only_entry(dir.path());
    // Where an engine without fuel metering looks: a different name.
    let unmetered = sandbox(dir.path(), false);
    assert_eq!(load(&unmetered).origin(), Origin::Compiled);
    let other = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).find(|p| *p != metered).unwrap();
    // Put the metered artifact under the unmetered name: wasmtime refuses it.
    std::fs::copy(&metered, &other).unwrap();
    let fresh = sandbox(dir.path(), false);
    let program = load(&fresh);
    assert_eq!(program.origin(), Origin::Rebuilt);
    greets(&fresh, &program).await;
}

#[test]
fn exec_fills_the_cache_and_cache_clear_empties_it() {
    let state = tempfile::tempdir().unwrap();
    let hello = guest("hello");
    let ls = || {
        let out = wfrun().env("WFRUN_DIR", state.path()).args(["cache", "ls", "--json"]).output().unwrap();
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
    };
    assert!(ls().is_empty());
    for _ in 0..2 {
        let out =
            wfrun().env("WFRUN_DIR", state.path()).args(["exec", "-q", hello.to_str().unwrap()]).output().unwrap();
        assert_eq!(out.status.code(), Some(0));
    }
    assert_eq!(ls().len(), 1, "one component, one engine: one entry");
    let out = wfrun()
        .env("WFRUN_DIR", state.path())
        .args(["exec", "-q", "--no-cache", hello.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(ls().len(), 1);
    let clear = wfrun().env("WFRUN_DIR", state.path()).args(["cache", "clear"]).output().unwrap();
    assert_eq!(clear.status.code(), Some(0));
    assert!(ls().is_empty());
}
