//! The one runner: the trust flags `exec` and the daemon enforce, rejected
//! bundles recorded alike, and the prepared-program cache of a long-lived
//! host.

use crate::exec::wfrun;
use crate::guests::guest;
use crate::sandbox::sandbox;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use wfrun_runtime::outcome::{ErrorCode, GuestKind, RunStatus};
use wfrun_runtime::policy::TrustPolicy;
use wfrun_runtime::runner::{CacheStats, ProgramCache, Runner};
use wfrun_runtime::store::Store;

fn keygen(dir: &Path) -> (PathBuf, PathBuf) {
    let out = wfrun().args(["keygen", "--out"]).arg(dir).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    (dir.join("wfrun.key"), dir.join("wfrun.pub"))
}

fn signed_copy(dir: &Path, name: &str, key: &Path) -> PathBuf {
    let path = dir.join(format!("{name}-signed.wasm"));
    std::fs::copy(guest(name), &path).unwrap();
    let out = wfrun().arg("sign").arg(&path).arg("--key").arg(key).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    path
}

/// `wfrun exec --json` with its own state directory: (exit status, report).
fn exec(state: &Path, args: &[&str]) -> (i32, Value) {
    let out = wfrun().env("WFRUN_DIR", state).arg("exec").arg("--json").args(args).output().unwrap();
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not a report ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap(), report)
}

#[test]
fn require_signed_refuses_unsigned_bundles_and_needs_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (secret, public) = keygen(&dir.path().join("keys"));
    let signed = signed_copy(dir.path(), "hello", &secret);
    let unsigned = guest("hello");
    let (signed, unsigned, public) = (signed.to_str().unwrap(), unsigned.to_str().unwrap(), public.to_str().unwrap());

    // require_signed with a key: unsigned refused, signed runs.
    let (status, report) = exec(&state, &[unsigned, "--require-signed", "--trust", public]);
    assert_eq!(
        (status, &report["error_code"], &report["error_detail"]),
        (6, &"invalid_bundle".into(), &"signature_missing".into())
    );
    let (status, report) = exec(&state, &[signed, "--require-signed", "--trust", public]);
    assert_eq!(status, 0, "{report}");

    // Trusted keys without require_signed: unsigned bundles are still refused.
    let (status, report) = exec(&state, &[unsigned, "--trust", public]);
    assert_eq!((status, &report["error_detail"]), (6, &"signature_missing".into()));

    // require_signed with no key: a configuration error, and nothing runs.
    let (status, report) = exec(&state, &[signed, "--require-signed"]);
    assert_eq!(
        (status, &report["error_code"], &report["error_detail"]),
        (6, &"invalid_input".into(), &"invalid_setting".into())
    );
    assert!(report["output"].is_null());
}

#[test]
fn a_rejected_bundle_is_recorded_with_its_code_and_detail() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "not wasm at all").unwrap();
    let (status, report) = exec(&state, &[text.to_str().unwrap()]);
    assert_eq!((status, &report["error_detail"]), (6, &"not_wasm".into()));
    let store = Store::open_existing(&state).unwrap().expect("the rejection created the run database");
    let record = store.run(report["run_id"].as_str().unwrap()).unwrap().expect("the rejected run is recorded");
    assert_eq!(record.status, RunStatus::Failed);
    assert_eq!(record.error_code, Some(ErrorCode::InvalidBundle));
    assert_eq!(record.error_detail.as_deref(), Some("not_wasm"));
    assert_eq!(record.kind, None);
    assert_eq!(record.workflow, "notes");

    // A job given --input is an input rejection of a bundle that loaded.
    let (status, report) = exec(&state, &[guest("hello-job").to_str().unwrap(), "--input", "{}"]);
    assert_eq!((status, &report["error_code"]), (6, &"invalid_input".into()));
    let record = store.run(report["run_id"].as_str().unwrap()).unwrap().unwrap();
    assert_eq!((record.kind, record.error_code), (Some(GuestKind::Job), Some(ErrorCode::InvalidInput)));
}

#[test]
fn a_kept_program_is_reused_until_its_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let runner = Runner::new(sandbox().clone(), None);
    let cache = ProgramCache::default();
    let trust = TrustPolicy::default();
    let bundle = dir.path().join("node.wasm");
    std::fs::copy(guest("hello"), &bundle).unwrap();

    let first = cache.prepare(&runner, &bundle, &trust).unwrap();
    let again = cache.prepare(&runner, &bundle, &trust).unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &again), "an unchanged file is not prepared again");
    assert_eq!(cache.stats(), CacheStats { programs: 1, hits: 1, loads: 1, spares_taken: 0 });

    // Rewritten with the same bytes (a new mtime): read and hashed, not loaded.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::copy(guest("hello"), &bundle).unwrap();
    let touched = cache.prepare(&runner, &bundle, &trust).unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &touched));
    assert_eq!(cache.stats().loads, 1);

    // Other bytes: loaded again, and it is the new program.
    std::fs::copy(guest("stats"), &bundle).unwrap();
    let changed = cache.prepare(&runner, &bundle, &trust).unwrap();
    assert!(!std::sync::Arc::ptr_eq(&first, &changed));
    assert_ne!(first.workflow().digest(), changed.workflow().digest());
    assert_eq!(cache.stats().loads, 2);

    // Under a trust policy, a kept signed program does not survive its file
    // being swapped for an unsigned one.
    let (secret, public) = keygen(&dir.path().join("keys"));
    let signed = signed_copy(dir.path(), "hello", &secret);
    let trust = TrustPolicy::load(&[public.display().to_string()], true).unwrap();
    assert!(cache.prepare(&runner, &signed, &trust).is_ok());
    std::fs::copy(guest("hello"), &signed).unwrap();
    let refused = cache.prepare(&runner, &signed, &trust).unwrap_err();
    assert_eq!(refused.detail, "signature_missing");
    // A detached signature appearing beside it counts as a change too.
    let out = wfrun().arg("sign").arg(&signed).arg("--key").arg(&secret).arg("--detached").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(cache.prepare(&runner, &signed, &trust).is_ok());
}

#[tokio::test]
async fn a_plan_the_policy_refuses_is_recorded_as_rejected() {
    use wfrun_runtime::limits::LimitRequest;
    use wfrun_runtime::policy::{NodeRules, Policy};
    use wfrun_runtime::workflow::Execution;
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(Store::open(dir.path()).unwrap());
    let runner = Runner::new(sandbox().clone(), Some(store.clone()));
    let prepared = runner.prepare(&guest("hello"), &TrustPolicy::default()).unwrap();
    let digest = prepared.workflow().digest().to_owned();

    let hello = || Execution { input: r#"{"name":"policy"}"#.to_owned(), ..Execution::default() };
    let deny =
        Policy { nodes: NodeRules { deny: [digest.clone()].into(), ..NodeRules::default() }, ..Policy::default() };
    let report = runner.run(&prepared, &deny, hello()).await.unwrap();
    assert_eq!(
        (report.error_code, report.error_detail.as_deref()),
        (Some(ErrorCode::InvalidBundle), Some("node_denied"))
    );
    let record = store.run(&report.run_id).unwrap().unwrap();
    assert_eq!((record.status, record.error_detail.as_deref()), (RunStatus::Failed, Some("node_denied")));
    assert!(report.output.is_none(), "a refused plan never runs");

    let allowed =
        Policy { nodes: NodeRules { allow: Some([digest].into()), ..NodeRules::default() }, ..Policy::default() };
    assert!(runner.run(&prepared, &allowed, hello()).await.unwrap().succeeded());

    // By what it imports: `fetch` imports wasi:http, `hello` does not.
    let no_http = Policy {
        nodes: NodeRules { deny_imports: vec!["wasi:http".to_owned()], ..NodeRules::default() },
        ..Policy::default()
    };
    assert!(runner.run(&prepared, &no_http, hello()).await.unwrap().succeeded());
    let fetch = runner.prepare(&guest("fetch"), &TrustPolicy::default()).unwrap();
    let report = runner.run(&fetch, &no_http, Execution::default()).await.unwrap();
    assert_eq!(report.error_detail.as_deref(), Some("import_denied"));

    // A plain component asks for nothing, so a strict policy holds nothing against it.
    let strict = Policy {
        strict_limits: true,
        ceilings: LimitRequest { memory_bytes: Some(16 << 20), ..Default::default() },
        ..Policy::default()
    };
    assert!(runner.run(&prepared, &strict, hello()).await.unwrap().succeeded());
}
