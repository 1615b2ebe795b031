//! Guest metrics: the `metrics` import, its caps and refusals, and where
//! the values go (the report, the run record, the uploaded report), from
//! Rust, Python and JavaScript nodes.

use crate::daemon::{stderr, toml_path};
use crate::guests::{guest, polyglot};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use wfrun_runtime::outcome::{Metric, MetricKind};
use wfrun_runtime::store::Store;

fn exec(state: &Path, bundle: &Path, input: &Value) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wfrun"))
        .arg("--state-dir")
        .arg(state)
        .args(["exec", "--json", "--input", &input.to_string()])
        .arg(bundle)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn succeeded(out: &Output) -> Value {
    assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_node_records_gauges_and_counters_and_every_refusal_is_answered_not_recorded() {
    let state = tempfile::tempdir().unwrap();
    let report = succeeded(&exec(state.path(), &guest("hostile"), &json!({ "mode": "metrics", "n": 70 })));
    let said = &report["output"];
    assert_eq!(said["bad_name"], "invalid-name");
    assert_eq!(said["long_name"], "invalid-name");
    assert_eq!(said["nan"], "invalid-value");
    assert_eq!(said["negative"], "invalid-value");
    assert_eq!(said["mismatch"], "kind-mismatch");
    assert_eq!(said["last"], "too-many", "70 more names go past the 64 a run may keep");
    let metrics = report["metrics"].as_object().unwrap();
    assert_eq!(metrics.len(), 64);
    assert_eq!(metrics["calls"], json!({ "kind": "counter", "value": 6.0 }), "three deltas of 2, the -1 refused");
    assert_eq!(metrics["level"], json!({ "kind": "gauge", "value": 7.5 }), "the last value set");
    assert!(!metrics.contains_key("nan") && !metrics.contains_key("no spaces"));

    // Kept with the run, and in the report the daemon would upload.
    let store = Store::open_existing(state.path()).unwrap().unwrap();
    let run = store.run(report["run_id"].as_str().unwrap()).unwrap().unwrap();
    assert_eq!(run.metrics["calls"], Metric { kind: MetricKind::Counter, value: 6.0 });
    let body = wfrun_runtime::store::outbox::run_body(&run);
    assert_eq!(body.metrics.guest, run.metrics);
    let show = Command::new(env!("CARGO_BIN_EXE_wfrun"))
        .arg("--state-dir")
        .arg(state.path())
        .args(["runs", "show", &run.run_id, "--json"])
        .output()
        .unwrap();
    let shown: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(shown["metrics"]["level"]["value"], 7.5);
}

#[test]
fn rust_python_and_javascript_nodes_record_metrics_through_their_sdks() {
    let state = tempfile::tempdir().unwrap();
    let stats = guest("stats");
    let report = succeeded(&exec(state.path(), &stats, &json!({ "values": [3, 1, 2] })));
    assert_eq!(report["metrics"]["values"], json!({ "kind": "counter", "value": 3.0 }));
    assert_eq!(report["metrics"]["mean"], json!({ "kind": "gauge", "value": 2.0 }));
    for node in ["python-hello", "js-hello"] {
        let report = succeeded(&exec(state.path(), &polyglot(node), &json!({ "name": "m" })));
        assert_eq!(report["metrics"]["greetings"], json!({ "kind": "counter", "value": 1.0 }), "{node}");
    }
}

#[test]
fn a_workflows_metrics_are_kept_by_node_and_a_guest_without_the_import_still_links() {
    let dir = tempfile::tempdir().unwrap();
    let stats = guest("stats");
    let manifest = dir.path().join("workflow.toml");
    std::fs::write(
        &manifest,
        format!(
            "name = \"w\"\nversion = \"1\"\n[nodes.first]\ncomponent = {0}\n[nodes.second]\ncomponent = {0}\n",
            toml_path(&stats)
        ),
    )
    .unwrap();
    let bundle = dir.path().join("w.wasm");
    let pack = Command::new(env!("CARGO_BIN_EXE_wfrun"))
        .arg("--state-dir")
        .arg(dir.path())
        .arg("pack")
        .arg(&manifest)
        .arg("-o")
        .arg(&bundle)
        .output()
        .unwrap();
    assert_eq!(pack.status.code(), Some(0), "{}", stderr(&pack));
    let report = succeeded(&exec(dir.path(), &bundle, &json!({ "values": [1, 2] })));
    for node in ["first", "second"] {
        assert_eq!(report["metrics"][format!("{node}.values")]["value"], 2.0, "{report}");
        let record = report["nodes"].as_array().unwrap().iter().find(|n| n["node"] == node).unwrap();
        assert_eq!(record["metrics"]["mean"]["value"], 1.5);
    }

    // `hello` does not import `metrics` (it never calls it): a component
    // made against the contract before `metrics` existed links as before.
    let hello = guest("hello");
    let inspect = Command::new(env!("CARGO_BIN_EXE_wfrun")).args(["inspect", "--json"]).arg(&hello).output().unwrap();
    let inspect: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let imports = inspect["nodes"][0]["imports"].as_array().unwrap();
    assert!(!imports.iter().any(|i| i.as_str().unwrap().starts_with("wfrun:node/metrics")), "{imports:?}");
    let report = succeeded(&exec(dir.path(), &hello, &json!({ "name": "old" })));
    assert!(report.get("metrics").is_none(), "{report}");
}
