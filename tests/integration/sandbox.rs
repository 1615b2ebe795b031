//! The library: loading bundles into programs and running them.

use crate::guests::{guest, wat};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use wfrun_runtime::bundle::Bundle;
use wfrun_runtime::outcome::{ErrorCode, GuestKind, RunReport, RunStatus};
use wfrun_runtime::sandbox::{DirGrant, EngineOptions, Grants, Limits, LoadError, Program, RunRequest, Sandbox};

/// One sandbox for the whole test process, as in `wfrun daemon`.
pub fn sandbox() -> &'static Arc<Sandbox> {
    static SANDBOX: OnceLock<Arc<Sandbox>> = OnceLock::new();
    SANDBOX.get_or_init(|| Arc::new(Sandbox::new(EngineOptions::default()).unwrap()))
}

/// Loads (once) the guest at `path` into the shared sandbox.
pub fn program(path: &Path) -> Program {
    static PROGRAMS: OnceLock<Mutex<HashMap<PathBuf, Program>>> = OnceLock::new();
    let mut programs = PROGRAMS.get_or_init(Default::default).lock().unwrap();
    programs
        .entry(path.to_path_buf())
        .or_insert_with(|| sandbox().load(Bundle::read(path).unwrap().bytes(), &path.display().to_string()).unwrap())
        .clone()
}

/// Loads a WAT fixture into the shared sandbox.
pub fn wat_program(name: &str) -> Result<Program, LoadError> {
    sandbox().load(&wat(name), &format!("{name}.wat"))
}

/// Runs a node with `input` under `limits`.
pub async fn run_node(name: &str, input: serde_json::Value, limits: Limits) -> RunReport {
    let request = RunRequest { input: input.to_string(), limits, ..RunRequest::default() };
    sandbox().run(&program(&guest(name)), &request).await
}

#[tokio::test]
async fn hello_node_greets_by_name() {
    let report = run_node("hello", json!({"name": "Ada"}), Limits::default()).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:?}");
    assert_eq!(report.kind, Some(GuestKind::Node));
    assert_eq!(report.output.unwrap().get(), r#"{"greeting":"Hello, Ada!"}"#);
    assert!(report.fuel_consumed > 0);
    assert!(report.peak_memory_bytes >= 64 * 1024);
    assert_eq!(report.logs.len(), 1);
    assert_eq!(report.logs[0].level, "info");
}

#[tokio::test]
async fn stats_node_transforms_json() {
    let report = run_node("stats", json!({"values": [3, 1.5, 2]}), Limits::default()).await;
    let output: serde_json::Value = serde_json::from_str(report.output.unwrap().get()).unwrap();
    assert_eq!(output["count"], 3);
    assert_eq!(output["sum"], 6.5);
    assert_eq!(output["sorted"], json!([1.5, 2.0, 3.0]));
}

#[tokio::test]
async fn node_errors_are_reported_with_the_nodes_own_code() {
    let report = run_node("stats", json!({"values": [1, "two"]}), Limits::default()).await;
    assert_eq!(report.error_code, Some(ErrorCode::NodeError));
    let node_error = report.node_error.unwrap();
    assert_eq!(node_error.code, "invalid-input");
    assert!(!node_error.retryable);

    let report = run_node("hostile", json!({"mode": "fail"}), Limits::default()).await;
    assert!(report.node_error.unwrap().retryable);
}

#[tokio::test]
async fn malformed_input_is_rejected_before_the_guest_runs() {
    let request = RunRequest { input: "{not json".to_owned(), ..RunRequest::default() };
    let report = sandbox().run(&program(&guest("hello")), &request).await;
    // Had the guest run, its SDK would have answered with a node error.
    assert_eq!(report.error_code, Some(ErrorCode::InvalidInput));
}

#[tokio::test]
async fn jobs_get_their_arguments_after_the_program_name() {
    let request = RunRequest { args: vec!["args".into(), "a b".into(), "c".into()], ..RunRequest::default() };
    let report = sandbox().run(&program(&guest("hostile-job")), &request).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:?}");
    assert_eq!(report.exit_code, Some(0));
    assert_eq!(report.stdout, "hostile-job.wasm|args|a b|c\n");
}

#[tokio::test]
async fn a_failing_job_reports_its_exit_status() {
    let request = RunRequest { args: vec!["exit".into()], ..RunRequest::default() };
    let report = sandbox().run(&program(&guest("hostile-job")), &request).await;
    assert_eq!(report.error_code, Some(ErrorCode::NodeError));
    assert_eq!(report.exit_code, Some(1));
}

#[test]
fn bundles_exporting_neither_world_are_rejected() {
    let err = wat_program("empty-component").unwrap_err();
    assert!(matches!(err, LoadError::NoKnownWorld { .. }), "{err}");
    assert_eq!(err.detail(), "no_known_world");
}

#[tokio::test]
async fn granted_directories_are_read_only_unless_rw() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "from the host").unwrap();
    let grant = |writable| Grants {
        dirs: vec![DirGrant { host: dir.path().to_path_buf(), guest: "/data".into(), writable }],
        env: vec![("WFRUN_TEST".into(), "granted".into())],
        ..Grants::default()
    };
    let run = |grants: Grants| async move {
        let request = RunRequest { input: json!({"mode": "files"}).to_string(), grants, ..RunRequest::default() };
        let report = sandbox().run(&program(&guest("hostile")), &request).await;
        serde_json::from_str::<serde_json::Value>(report.output.expect("files mode succeeds").get()).unwrap()
    };

    let read_only = run(grant(false)).await;
    assert_eq!(read_only["read"], "from the host");
    assert_eq!(read_only["env"], "granted");
    assert!(read_only["write"].as_str().unwrap().starts_with("denied"), "{read_only}");
    assert!(!dir.path().join("out.txt").exists());

    let read_write = run(grant(true)).await;
    assert_eq!(read_write["write"], "allowed");
    assert_eq!(std::fs::read_to_string(dir.path().join("out.txt")).unwrap(), "written by guest");
}

#[tokio::test]
async fn a_missing_granted_directory_is_invalid_input() {
    let grants = Grants {
        dirs: vec![DirGrant { host: "/no/such/dir/anywhere".into(), guest: "/data".into(), writable: false }],
        ..Grants::default()
    };
    let request = RunRequest { input: json!({"mode": "files"}).to_string(), grants, ..RunRequest::default() };
    let report = sandbox().run(&program(&guest("hostile")), &request).await;
    assert_eq!(report.error_code, Some(ErrorCode::InvalidInput));
}
