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

/// The artifact files (`.cwasm`) in `dir`.
fn artifacts(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    found.sort();
    found
}

/// The one artifact in `dir`, beside its meta file.
fn only_entry(dir: &Path) -> PathBuf {
    let entries = artifacts(dir);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].with_extension("meta").is_file(), "its meta file");
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
        let entry = only_entry(dir);
        for file in [entry.clone(), entry.with_extension("meta")] {
            assert_eq!(std::fs::metadata(file).unwrap().permissions().mode() & 0o777, 0o600);
        }
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
    let other = artifacts(dir.path()).into_iter().find(|p| *p != metered).unwrap();
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

#[tokio::test]
async fn a_verified_entry_is_trusted_by_its_identity_until_the_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    load(&sandbox(dir.path(), true));
    let entry = only_entry(dir.path());
    let meta = entry.with_extension("meta");
    let written = std::fs::read(&meta).unwrap();
    // The first load after the change time has settled checks the hash and
    // records the file's identity.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(load(&sandbox(dir.path(), true)).origin(), Origin::Cached);
    let verified = std::fs::read(&meta).unwrap();
    assert_ne!(verified, written, "the identity was recorded");
    assert_eq!(load(&sandbox(dir.path(), true)).origin(), Origin::Cached);
    // A write to the artifact, however small, changes its identity: the
    // hash is checked again, fails, and the entry is rebuilt.
    let mut bytes = std::fs::read(&entry).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&entry, &bytes).unwrap();
    let fresh = sandbox(dir.path(), true);
    let program = load(&fresh);
    assert_eq!(program.origin(), Origin::Rebuilt);
    greets(&fresh, &program).await;
    // A meta file copied from another entry (another engine) is refused too.
    let unmetered = sandbox(dir.path(), false);
    load(&unmetered);
    let other = artifacts(dir.path()).into_iter().find(|p| *p != entry).unwrap();
    std::fs::copy(other.with_extension("meta"), &meta).unwrap();
    std::fs::copy(&other, &entry).unwrap();
    assert_eq!(load(&sandbox(dir.path(), true)).origin(), Origin::Rebuilt);
}

/// `component` with a custom section `pad` holding `payload` appended: a
/// valid component of a predictable size.
fn padded(component: &[u8], payload: &[u8]) -> Vec<u8> {
    let name = b"pad";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(payload);
    assert!(section.len() < 128, "one LEB byte");
    let mut bytes = component.to_vec();
    bytes.push(0);
    bytes.push(section.len() as u8);
    bytes.extend_from_slice(&section);
    bytes
}

#[test]
fn a_settled_bundles_digest_is_remembered_and_any_write_to_it_is_hashed_again() {
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hello = std::fs::read(guest("hello")).unwrap();
    let (first, second) = (padded(&hello, b"first version"), padded(&hello, b"other version"));
    assert_eq!(first.len(), second.len());
    let digest = |bytes: &[u8]| {
        use sha2::Digest;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
    };
    let bundle = dir.path().join("hello.wasm");
    std::fs::write(&bundle, &first).unwrap();
    let exec = || {
        let out = wfrun()
            .env("WFRUN_DIR", state.path())
            .args(["exec", "--json", "--input", r#"{"name":"m"}"#])
            .arg(&bundle)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["bundle_digest"].as_str().unwrap().to_owned()
    };
    let memo = state.path().join("cache").join("digests");
    // Changed less than two seconds ago: hashed, not remembered.
    assert_eq!(exec(), digest(&first));
    assert!(!memo.exists() || std::fs::read_dir(&memo).unwrap().count() == 0);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(exec(), digest(&first));
    assert_eq!(std::fs::read_dir(&memo).unwrap().count(), 1, "remembered once settled");
    assert_eq!(exec(), digest(&first), "recalled");

    // The same inode, the same size, the old modification time put back:
    // only the change time tells, and it does.
    let modified = std::fs::metadata(&bundle).unwrap().modified().unwrap();
    rewrite_in_place(&bundle, &second);
    std::fs::File::options().write(true).open(&bundle).unwrap().set_modified(modified).unwrap();
    assert_eq!(std::fs::metadata(&bundle).unwrap().modified().unwrap(), modified);
    assert_eq!(exec(), digest(&second), "a rewritten file is hashed again");

    // cache clear forgets the digests too.
    let clear = wfrun().env("WFRUN_DIR", state.path()).args(["cache", "clear"]).output().unwrap();
    assert_eq!(clear.status.code(), Some(0));
    assert!(!memo.exists());
}

/// Writes `bytes` over the start of `path`, in place (the same inode).
fn rewrite_in_place(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all(bytes).unwrap();
    file.sync_all().unwrap();
}

/// Bytes this thread has read through `read` and friends so far
/// (`/proc/thread-self/io`): what a call on this thread read, whatever
/// other tests do meanwhile.
fn bytes_read_by_this_thread() -> u64 {
    let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
    io.lines().find_map(|l| l.strip_prefix("rchar: ")).unwrap().trim().parse().unwrap()
}

/// `component` with a custom section of `size` bytes appended: the same
/// program, another digest, a larger file.
fn padded_to(component: &[u8], tag: u8, size: usize) -> Vec<u8> {
    let mut bytes = component.to_vec();
    // A custom section's id is 0; its encoding is its size and contents.
    bytes.push(0);
    wasm_encoder::Encode::encode(
        &wasm_encoder::CustomSection { name: "pad".into(), data: vec![tag; size].into() },
        &mut bytes,
    );
    bytes
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn an_unchanged_plain_bundle_whose_artifact_is_cached_is_not_read_again_and_a_rewritten_one_is() {
    use wfrun_runtime::policy::{Policy, TrustPolicy};
    use wfrun_runtime::runner::Runner;
    use wfrun_runtime::workflow::Execution;
    const SIZE: usize = 4 << 20;
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hello = std::fs::read(guest("hello")).unwrap();
    let (first, second) = (padded_to(&hello, 1, SIZE), padded_to(&hello, 2, SIZE));
    assert_eq!(first.len(), second.len());
    let sha = |bytes: &[u8]| {
        use sha2::Digest;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
    };
    let bundle = dir.path().join("hello.wasm");
    std::fs::write(&bundle, &first).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let runner = Runner::new(std::sync::Arc::new(sandbox(&state.path().join("cache"), true)), None);
    let trust = TrustPolicy::default();
    let prepare = |expected: &str| {
        let before = bytes_read_by_this_thread();
        let prepared = runner.prepare(&bundle, &trust).unwrap();
        assert_eq!(prepared.workflow().digest(), expected);
        bytes_read_by_this_thread() - before
    };
    // Read, hashed, compiled; the digest remembered (the file is settled).
    assert!(prepare(&sha(&first)) >= SIZE as u64);
    // Unchanged, its artifact cached: not read. (The new artifact is
    // hashed on its first load once settled, as the cache does.)
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let read = prepare(&sha(&first));
    assert!(read < SIZE as u64, "read {read} bytes of a bundle it remembers");
    // From then on, only the small memo and meta files.
    let read = prepare(&sha(&first));
    assert!(read < 16 * 1024, "read {read} bytes of a bundle it remembers");
    let prepared = runner.prepare(&bundle, &trust).unwrap();
    let report = runner
        .run(&prepared, &Policy::default(), Execution { input: r#"{"name":"memo"}"#.into(), ..Execution::default() })
        .await
        .unwrap();
    assert_eq!(report.output.unwrap().get(), r#"{"greeting":"Hello, memo!"}"#);

    // The same inode and size, the old modification time put back: read
    // and hashed again, and the new bytes are what runs.
    let modified = std::fs::metadata(&bundle).unwrap().modified().unwrap();
    rewrite_in_place(&bundle, &second);
    std::fs::File::options().write(true).open(&bundle).unwrap().set_modified(modified).unwrap();
    assert!(prepare(&sha(&second)) >= SIZE as u64);
}

#[test]
fn a_remembered_bundles_detached_signature_is_checked_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let keys = |name: &str| {
        let out = wfrun().args(["keygen", "--out"]).arg(dir.path().join(name)).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        (dir.path().join(name).join("wfrun.key"), dir.path().join(name).join("wfrun.pub"))
    };
    let ((ours, ours_pub), (theirs, _)) = (keys("ours"), keys("theirs"));
    let bundle = dir.path().join("hello.wasm");
    std::fs::copy(guest("hello"), &bundle).unwrap();
    let sig = dir.path().join("hello.wasm.sig");
    let sign = |key: &Path| {
        let out = wfrun().arg("sign").arg(&bundle).arg("--detached").arg("--key").arg(key).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    };
    sign(&ours);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let exec = || {
        let out = wfrun()
            .env("WFRUN_DIR", &state)
            .args(["exec", "--json", "--require-signed", "--trust"])
            .arg(&ours_pub)
            .arg(&bundle)
            .args(["--input", r#"{"name":"sig"}"#])
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code().unwrap(), report["error_detail"].as_str().map(str::to_owned))
    };
    // Run twice: the second run takes the bundle's digest from memory.
    assert_eq!(exec(), (0, None));
    assert_eq!(exec(), (0, None));
    // The bundle is untouched; its signature file is what changes.
    sign(&theirs);
    assert_eq!(exec(), (6, Some("signature_untrusted".to_owned())));
    std::fs::write(&sig, b"{\"not\": \"a record\"}").unwrap();
    assert_eq!(exec(), (6, Some("signature_malformed".to_owned())));
    std::fs::remove_file(&sig).unwrap();
    assert_eq!(exec(), (6, Some("signature_missing".to_owned())));
    sign(&ours);
    assert_eq!(exec(), (0, None));
}
