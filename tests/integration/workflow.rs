//! Workflows: packing, validation, execution order, retries, state, secrets,
//! run history and traces, through the library and the `wfrun` binary.

use crate::exec::wfrun;
use crate::guests::{guest, root};
use crate::sandbox::sandbox;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wfrun_runtime::limits::LimitRequest;
use wfrun_runtime::outcome::NodeStatus;
use wfrun_runtime::outcome::{ErrorCode, RunReport, RunStatus};
use wfrun_runtime::policy::Policy;
use wfrun_runtime::runner::Runner;
use wfrun_runtime::sandbox::{DirGrant, Grants};
use wfrun_runtime::store::Store;
use wfrun_runtime::workflow::{Execution, PackError, pack};

/// Writes `toml` as `workflow.toml` in `dir`, with `@name` standing for the
/// path of the built guest `name`, and packs it into `dir/<file>`.
fn pack_toml(dir: &Path, file: &str, toml: &str) -> Result<PathBuf, PackError> {
    let mut text = toml.to_owned();
    for name in ["hostile", "counter", "hello", "parse", "aggregate", "format", "hostile-job"] {
        text = text.replace(&format!("\"@{name}\""), &format!("{:?}", guest(name).display().to_string()));
    }
    let manifest = dir.join("workflow.toml");
    std::fs::write(&manifest, text).unwrap();
    let bytes = pack(sandbox(), &manifest)?;
    let path = dir.join(file);
    std::fs::write(&path, bytes).unwrap();
    Ok(path)
}

async fn run(bundle: &Path, store: &Arc<Store>, execution: Execution) -> RunReport {
    run_under(bundle, store, &Policy::default(), execution).await
}

/// Runs `bundle` through the one runner `exec` and the daemon use, under
/// the operator's `policy`.
async fn run_under(bundle: &Path, store: &Arc<Store>, policy: &Policy, execution: Execution) -> RunReport {
    let runner = Runner::new(sandbox().clone(), Some(store.clone()));
    let prepared = runner.prepare(bundle, &policy.trust).unwrap();
    runner.run(&prepared, policy, execution).await.unwrap()
}

fn input(value: Value) -> Execution {
    Execution { input: value.to_string(), ..Execution::default() }
}

fn output(report: &RunReport) -> Value {
    serde_json::from_str(report.output.as_ref().expect("the run has output").get()).unwrap()
}

/// The example `report` workflow, its component paths pointed at the
/// freshly built guests.
fn report_bundle(dir: &Path) -> PathBuf {
    let toml = std::fs::read_to_string(root().join("examples/workflows/report/workflow.toml")).unwrap();
    let toml = ["parse", "aggregate", "format"]
        .iter()
        .fold(toml, |t, n| t.replace(&format!("\"../../dist/{n}.wasm\""), &format!("\"@{n}\"")));
    pack_toml(dir, "report.wasm", &toml).unwrap()
}

const CSV: &str = "name,amount\nada,3\ngrace,5\nada,4";

#[tokio::test]
async fn the_example_workflow_packs_into_a_valid_component_and_runs_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = report_bundle(dir.path());
    let bytes = std::fs::read(&bundle).unwrap();
    wasmparser::Validator::new().validate_all(&bytes).expect("a workflow bundle is a valid component");

    let store = Arc::new(Store::open(&dir.path().join("state")).unwrap());
    let report = run(&bundle, &store, input(json!({"csv": CSV}))).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{:?}", report.error_message);
    assert_eq!(output(&report)["lines"], json!(["ada: 7", "grace: 5"]));
    assert_eq!(output(&report)["title"], "Totals by name", "config reached the node");

    let record = store.run(&report.run_id).unwrap().unwrap();
    let order: Vec<&str> = record.nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(order, ["parse", "aggregate", "format"]);
    assert!(record.nodes.iter().all(|n| n.status == NodeStatus::Succeeded && n.attempts == 1 && n.fuel_consumed > 0));
    let states: Vec<&str> = record.transitions.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(states, ["pending", "running", "succeeded"]);
    assert_eq!(record.workflow, "report");
    assert_eq!(record.version, "1.0.0");
}

#[test]
fn inspect_shows_nodes_capabilities_and_signature_status() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = report_bundle(dir.path());
    let out = wfrun().args(["inspect", "--json", bundle.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["kind"], "workflow");
    assert_eq!(info["name"], "report");
    assert_eq!(info["version"], "1.0.0");
    assert!(info["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(info["signature"].as_str().unwrap().starts_with("unsigned"));
    let nodes: Vec<&str> = info["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(nodes, ["parse", "aggregate", "format"]);
    assert!(info["nodes"][0]["exports"].as_array().unwrap().contains(&json!("wfrun:node/handler@0.1.0")));
    assert!(info["nodes"][0]["imports"].as_array().unwrap().contains(&json!("wfrun:node/config@0.1.0")));
}

#[test]
fn bad_workflow_files_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("name = \"w\"\nversion = \"1\"\n[nodes.a]\ncomponent = \"@hello\"\ncolour = \"red\"", "colour"),
        (
            "name = \"w\"\nversion = \"1\"\n[nodes.a]\ncomponent = \"@hello\"\ndepends_on = [\"b\"]\n[nodes.b]\ncomponent = \"@hello\"\ndepends_on = [\"a\"]",
            "cycle",
        ),
        ("name = \"w\"\nversion = \"1\"\n[nodes.a]\ncomponent = \"missing.wasm\"", "no such file"),
        ("name = \"w\"\nversion = \"1\"\n[nodes.a]\ncomponent = \"@hostile-job\"", "job"),
        ("name = \"w\"\nversion = \"1\"\n[nodes.a]\ncomponent = \"@hello\"\ndepends_on = [\"ghost\"]", "ghost"),
    ];
    for (toml, reason) in cases {
        let err = pack_toml(dir.path(), "w.wasm", toml).unwrap_err();
        assert!(err.to_string().contains(reason), "{toml:?}: {err}");
        // And through the binary: exit 6, the reason on stderr.
        let manifest = dir.path().join("workflow.toml");
        let out =
            wfrun().args(["pack", manifest.to_str().unwrap(), "-o"]).arg(dir.path().join("x.wasm")).output().unwrap();
        assert_eq!(out.status.code(), Some(6), "{toml:?}");
        assert!(!dir.path().join("x.wasm").exists(), "nothing is written for a bad workflow");
    }
}

const FLAKY: &str = r#"
name = "flaky"
version = "1"
[nodes.first]
component = "@hostile"
retry = { max_attempts = 3, initial_backoff = "10ms" }
[nodes.after]
component = "@hostile"
depends_on = ["first"]
inputs = { mode = "$input.then" }
"#;

async fn run_flaky(max_attempts: u32, fails: u64) -> (RunReport, Arc<Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let toml = FLAKY.replace("max_attempts = 3", &format!("max_attempts = {max_attempts}"));
    let bundle = pack_toml(dir.path(), "flaky.wasm", &toml).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let store = Arc::new(Store::open(&dir.path().join("state")).unwrap());
    let execution = Execution {
        input: json!({"mode": "flaky", "n": fails + 1, "then": "ok"}).to_string(),
        grants: Grants {
            dirs: vec![DirGrant { host: data, guest: "/data".into(), writable: true }],
            ..Grants::default()
        },
        ..Execution::default()
    };
    (run(&bundle, &store, execution).await, store, dir)
}

#[tokio::test]
async fn retryable_node_errors_are_retried_until_they_succeed() {
    let (report, store, _dir) = run_flaky(3, 2).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{:?}", report.error_message);
    let record = store.run(&report.run_id).unwrap().unwrap();
    assert_eq!(record.nodes[0].node, "first");
    assert_eq!(record.nodes[0].attempts, 3);
}

#[tokio::test]
async fn a_node_that_keeps_failing_fails_the_run_and_skips_the_rest() {
    let (report, store, _dir) = run_flaky(2, 5).await;
    assert_eq!(report.error_code, Some(ErrorCode::NodeError));
    assert_eq!(report.failed_node.as_deref(), Some("first"));
    let record = store.run(&report.run_id).unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Failed);
    assert_eq!(record.failed_node.as_deref(), Some("first"));
    assert_eq!((record.nodes[0].status.as_str(), record.nodes[0].attempts), ("failed", 2));
    assert_eq!((record.nodes[1].node.as_str(), record.nodes[1].status.as_str()), ("after", "skipped"));
}

#[tokio::test]
async fn state_quota_fails_the_call_not_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let toml = "name = \"q\"\nversion = \"1\"\n[capabilities.state]\nmax_total_bytes = 10000\n[nodes.fill]\ncomponent = \"@hostile\"";
    let bundle = pack_toml(dir.path(), "q.wasm", toml).unwrap();
    let store = Arc::new(Store::open(&dir.path().join("state")).unwrap());
    let report = run(&bundle, &store, input(json!({"mode": "state-fill"}))).await;
    assert_eq!(report.status, RunStatus::Succeeded, "the node handles the refusal itself");
    let out = output(&report);
    // Each entry is a 9-byte key and a 1 KiB value: nine fit in 10,000 bytes.
    assert_eq!(out["written"], 9);
    assert!(out["error"].as_str().unwrap().contains("QuotaExceeded"), "{out}");
    assert_eq!(store.state_sizes("q").unwrap().len(), 9, "what fitted was committed");
}

#[tokio::test]
async fn a_secret_reaches_only_the_nodes_that_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"
        name = "s"
        version = "1"
        [capabilities]
        secrets = ["TOKEN"]
        [nodes.granted]
        component = "@hostile"
        secrets = ["TOKEN"]
        [nodes.other]
        component = "@hostile"
    "#;
    let bundle = pack_toml(dir.path(), "s.wasm", toml).unwrap();
    let store = Arc::new(Store::open(&dir.path().join("state")).unwrap());
    let mut execution = input(json!({"mode": "secret"}));
    execution.secrets.insert("TOKEN".into(), "s3cret".into());
    let report = run(&bundle, &store, execution).await;
    let out = output(&report);
    assert_eq!(out["granted"]["secret"], "Ok(Some(\"s3cret\"))");
    assert_eq!(out["other"]["secret"], "Err(ConfigError::NotGranted(\"TOKEN\"))");
    // The traces record that the secret was asked for, never its value.
    // (The node's output holds it only because this node chose to print it.)
    let record = store.run(&report.run_id).unwrap().unwrap();
    let traces = serde_json::to_string(&record.nodes.iter().map(|n| &n.trace).collect::<Vec<_>>()).unwrap();
    assert!(traces.contains("secret_get") && !traces.contains("s3cret"), "{traces}");
}

#[tokio::test]
async fn state_written_by_a_failed_run_is_not_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("state")).unwrap());
    let counting =
        pack_toml(dir.path(), "ok.wasm", "name = \"ledger\"\nversion = \"1\"\n[nodes.count]\ncomponent = \"@counter\"")
            .unwrap();
    let failing = pack_toml(
        dir.path(),
        "bad.wasm",
        "name = \"ledger\"\nversion = \"2\"\n[nodes.count]\ncomponent = \"@counter\"\n[nodes.boom]\ncomponent = \"@hostile\"\ndepends_on = [\"count\"]\ninputs = { mode = \"$input.mode\" }",
    )
    .unwrap();
    for expected in [1, 2] {
        assert_eq!(output(&run(&counting, &store, input(json!({}))).await)["count"], expected);
    }
    let failed = run(&failing, &store, input(json!({"mode": "state-then-fail"}))).await;
    assert_eq!(failed.failed_node.as_deref(), Some("boom"));
    assert_eq!(
        output(&run(&counting, &store, input(json!({}))).await)["count"],
        3,
        "the failed run's writes were dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_nodes_run_at_the_same_time() {
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"
        name = "p"
        version = "1"
        max_parallel = 2
        [nodes.a]
        component = "@hostile"
        [nodes.b]
        component = "@hostile"
    "#;
    let bundle = pack_toml(dir.path(), "p.wasm", toml).unwrap();
    let store = Arc::new(Store::open(&dir.path().join("state")).unwrap());
    let report = run(&bundle, &store, input(json!({"mode": "nap", "n": 1000}))).await;
    assert_eq!(report.status, RunStatus::Succeeded);
    // Two one-second naps one after the other would take two seconds.
    assert!(report.duration_ms < 1800.0, "took {} ms", report.duration_ms);
    let one_at_a_time = Policy { max_parallel: Some(1), ..Policy::default() };
    let report = run_under(&bundle, &store, &one_at_a_time, input(json!({"mode": "nap", "n": 1000}))).await;
    assert!(
        report.duration_ms >= 2000.0,
        "the operator's --max-parallel 1 was not honoured: {} ms",
        report.duration_ms
    );
}

#[tokio::test]
async fn cancelling_stops_running_nodes_and_records_the_run_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let toml = "name = \"c\"\nversion = \"1\"\n[nodes.spin]\ncomponent = \"@hostile\"\n[nodes.next]\ncomponent = \"@hostile\"\ndepends_on = [\"spin\"]";
    let bundle = pack_toml(dir.path(), "c.wasm", toml).unwrap();
    let store = Arc::new(Store::open(&dir.path().join("state")).unwrap());
    let cancel = Arc::new(tokio::sync::Notify::new());
    let mut execution = input(json!({"mode": "loop"}));
    execution.cancel = Some(cancel.clone());
    let endless =
        Policy { ceilings: LimitRequest { fuel: Some(u64::MAX / 2), ..Default::default() }, ..Policy::default() };
    let trigger = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        cancel.notify_one();
    });
    let started = std::time::Instant::now();
    let report = run_under(&bundle, &store, &endless, execution).await;
    trigger.await.unwrap();
    assert_eq!(report.status, RunStatus::Cancelled);
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "the busy guest was not stopped");
    let record = store.run(&report.run_id).unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Cancelled);
    let statuses: Vec<(&str, NodeStatus)> = record.nodes.iter().map(|n| (n.node.as_str(), n.status)).collect();
    assert_eq!(statuses, [("spin", NodeStatus::Cancelled), ("next", NodeStatus::Skipped)]);
}

#[tokio::test]
async fn a_bundle_cannot_grant_itself_more_than_the_operator_allows() {
    let dir = tempfile::tempdir().unwrap();
    let toml =
        "name = \"greedy\"\nversion = \"1\"\n[limits]\nmemory = \"4GiB\"\n[nodes.grow]\ncomponent = \"@hostile\"";
    let bundle = pack_toml(dir.path(), "g.wasm", toml).unwrap();
    let store = Arc::new(Store::open(&dir.path().join("state")).unwrap());
    let small = Policy {
        ceilings: LimitRequest { memory_bytes: Some(16 * 1024 * 1024), ..Default::default() },
        ..Policy::default()
    };
    let report = run_under(&bundle, &store, &small, input(json!({"mode": "grow"}))).await;
    assert_eq!(report.error_code, Some(ErrorCode::MemoryLimit));
    assert!(report.peak_memory_bytes <= 16 * 1024 * 1024, "{}", report.peak_memory_bytes);
}

#[tokio::test]
async fn a_retried_attempts_state_writes_are_dropped() {
    let (report, store, _dir) = run_flaky(3, 2).await;
    assert_eq!(report.status, RunStatus::Succeeded);
    let keys: Vec<String> = store.state_sizes("flaky").unwrap().into_keys().collect();
    assert_eq!(keys, ["attempt-3"], "only the successful attempt's write is kept");
}

#[tokio::test]
async fn a_mapping_that_misses_at_run_time_fails_that_node_with_invalid_input() {
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"
        name = "m"
        version = "1"
        [nodes.a]
        component = "@hostile"
        [nodes.b]
        component = "@hostile"
        depends_on = ["a"]
        inputs = { mode = "a.no_such_field" }
    "#;
    let bundle = pack_toml(dir.path(), "m.wasm", toml).unwrap();
    let store = Arc::new(Store::open(&dir.path().join("state")).unwrap());
    let report = run(&bundle, &store, input(json!({"mode": "ok"}))).await;
    assert_eq!(report.error_code, Some(ErrorCode::InvalidInput));
    assert_eq!(report.failed_node.as_deref(), Some("b"));
    assert!(report.error_message.unwrap().contains("inputs.mode"));
    let record = store.run(&report.run_id).unwrap().unwrap();
    assert_eq!((record.nodes[1].node.as_str(), record.nodes[1].attempts), ("b", 0));
}

#[tokio::test]
async fn several_final_nodes_give_an_object_unless_output_names_one() {
    let dir = tempfile::tempdir().unwrap();
    let toml =
        "name = \"o\"\nversion = \"1\"\n[nodes.a]\ncomponent = \"@hostile\"\n[nodes.b]\ncomponent = \"@hostile\"";
    let bundle = pack_toml(dir.path(), "o.wasm", toml).unwrap();
    let store = Arc::new(Store::open(&dir.path().join("state")).unwrap());
    let both = output(&run(&bundle, &store, input(json!({"mode": "ok"}))).await);
    assert_eq!(both, json!({"a": {"ok": true}, "b": {"ok": true}}));
    let bundle =
        pack_toml(dir.path(), "o2.wasm", &toml.replace("version = \"1\"", "version = \"1\"\noutput = \"b\"")).unwrap();
    assert_eq!(output(&run(&bundle, &store, input(json!({"mode": "ok"}))).await), json!({"ok": true}));
}

#[test]
fn the_counter_counts_across_processes_and_traces_its_state_calls() {
    let counter = guest("counter");
    let state = tempfile::tempdir().unwrap();
    let exec = || {
        let out = wfrun()
            .env("WFRUN_DIR", state.path())
            .args(["exec", "--json", counter.to_str().unwrap()])
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let counts: Vec<Value> = (0..3).map(|_| exec()["output"]["count"].clone()).collect();
    assert_eq!(counts, [json!(1), json!(2), json!(3)]);

    let list = wfrun().env("WFRUN_DIR", state.path()).args(["runs", "list", "--json"]).output().unwrap();
    let runs: Vec<Value> = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(runs.len(), 3);
    let show = wfrun()
        .env("WFRUN_DIR", state.path())
        .args(["runs", "show", "--json", runs[0]["run_id"].as_str().unwrap()])
        .output()
        .unwrap();
    let run: Value = serde_json::from_slice(&show.stdout).unwrap();
    let calls: Vec<&str> =
        run["nodes"][0]["trace"].as_array().unwrap().iter().map(|c| c["call"].as_str().unwrap()).collect();
    assert_eq!(calls, ["state_get", "state_set"]);
    let text = wfrun()
        .env("WFRUN_DIR", state.path())
        .args(["runs", "show", "--trace", runs[0]["run_id"].as_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("state_set"));
}

#[test]
fn parallel_processes_on_one_state_directory_lose_no_records() {
    let counter = guest("counter");
    let state = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..6)
        .map(|_| {
            wfrun()
                .env("WFRUN_DIR", state.path())
                .args(["exec", "--json", counter.to_str().unwrap()])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    }
    let store = Store::open(state.path()).unwrap();
    let runs = store.list_runs(None, 100).unwrap();
    assert_eq!(runs.len(), 6);
    assert!(runs.iter().all(|r| r.status == RunStatus::Succeeded && r.nodes.len() == 1 && r.transitions.len() == 3));
    let db = rusqlite::Connection::open(state.path().join("wfrun.db")).unwrap();
    let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn runs_logs_show_each_nodes_captured_output() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = report_bundle(dir.path());
    let out = wfrun()
        .args(["exec", "--json", bundle.to_str().unwrap(), "--input"])
        .arg(json!({"csv": CSV}).to_string())
        .output()
        .unwrap();
    let run_id = serde_json::from_slice::<Value>(&out.stdout).unwrap()["run_id"].as_str().unwrap().to_owned();
    let logs = wfrun().args(["runs", "logs", &run_id, "--node", "parse"]).output().unwrap();
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(text.contains("=== parse ===") && text.contains("[info] parsed 3 rows"), "{text}");
    assert!(!text.contains("=== format ==="));
    let missing = wfrun().args(["runs", "show", "no-such-run"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(6));
}

#[test]
fn runs_list_filters_by_status_and_reading_creates_nothing() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("fresh");
    let list = |status: &str| {
        let out = wfrun().env("WFRUN_DIR", &dir).args(["runs", "list", "--json", "--status", status]).output().unwrap();
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
    };
    assert!(list("failed").is_empty());
    assert!(!dir.exists(), "listing runs must not create a state directory");
    let hostile = guest("hostile");
    for mode in ["ok", "fail", "ok"] {
        wfrun()
            .env("WFRUN_DIR", &dir)
            .args(["exec", "-q", hostile.to_str().unwrap(), "--input"])
            .arg(json!({"mode": mode}).to_string())
            .output()
            .unwrap();
    }
    assert_eq!(list("succeeded").len(), 2);
    let failed = list("failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["error_code"], "node_error");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    }
}
