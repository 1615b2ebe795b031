//! Run outputs: a writable `/outputs` per run, kept with the run, listed,
//! copied, capped and pruned.

use crate::daemon::{DaemonProcess, stderr, toml_path, wait_for};
use crate::guests::guest;
use crate::hardening::run_bounded;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use wfrun_runtime::outcome::RunStatus;

fn wfrun(state: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wfrun"));
    command.arg("--state-dir").arg(state).stdin(Stdio::null()).env_remove("WFRUN_REMOTE").env_remove("WFRUN_PROFILE");
    command.env("WFRUN_CLIENT_CONFIG", "/nonexistent/wfrun-client.toml");
    command
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("not JSON ({e}); stderr: {}", stderr(output)))
}

fn paths(files: &Value) -> Vec<String> {
    files.as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn an_exec_runs_outputs_are_kept_with_the_run_listed_and_copied() {
    let state = tempfile::tempdir().unwrap();
    let hostile = guest("hostile");
    let input = json!({ "mode": "outputs", "n": 3 }).to_string();
    let out =
        wfrun(state.path()).args(["exec", "--outputs", "--json", "--input", &input]).arg(&hostile).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = json(&out);
    let expected = ["out-0.txt", "out-1.txt", "out-2.txt", "sub/report.json"];
    assert_eq!(paths(&report["outputs"]), expected);
    assert_eq!(report["outputs"][0]["bytes"], 1024);
    let run_id = report["run_id"].as_str().unwrap();

    let show = wfrun(state.path()).args(["runs", "show", run_id, "--json"]).output().unwrap();
    assert_eq!(paths(&json(&show)["outputs"]), expected);
    let listed = wfrun(state.path()).args(["runs", "outputs", run_id, "--json"]).output().unwrap();
    assert_eq!(paths(&json(&listed)), expected);

    let to = state.path().join("fetched");
    let copy = wfrun(state.path()).args(["runs", "outputs", run_id, "--to"]).arg(&to).output().unwrap();
    assert_eq!(copy.status.code(), Some(0), "{}", stderr(&copy));
    assert_eq!(std::fs::read(to.join("sub/report.json")).unwrap(), br#"{"done": true}"#);
    assert_eq!(std::fs::read(to.join("out-2.txt")).unwrap(), vec![b'x'; 1024]);
    // A second copy would overwrite: refused.
    let again = wfrun(state.path()).args(["runs", "outputs", run_id, "--to"]).arg(&to).output().unwrap();
    assert_eq!(again.status.code(), Some(6));

    // Without --outputs there is no /outputs to write to.
    let none = wfrun(state.path()).args(["exec", "--json", "--input", &input]).arg(&hostile).output().unwrap();
    assert_eq!(none.status.code(), Some(3), "{}", stderr(&none));
    assert_eq!(json(&none)["node_error"]["code"], "no-outputs");

    // Pruned with the run.
    let prune =
        wfrun(state.path()).args(["runs", "prune", "--older-than", "0s", "--keep", "0", "--json"]).output().unwrap();
    assert_eq!(prune.status.code(), Some(0), "{}", stderr(&prune));
    assert!(json(&prune)["run_dirs"].as_u64().unwrap() >= 1);
    assert!(!state.path().join("runs").join(run_id).exists(), "the run's directory outlived it");
}

#[test]
fn a_run_over_its_outputs_cap_is_stopped_failed_and_its_outputs_removed() {
    let state = tempfile::tempdir().unwrap();
    let hostile = guest("hostile");
    for (mode, cap) in [
        ("outputs-flood", ["--max-outputs", "4MiB"]),
        // Deleted while open: in no directory, still counted.
        ("outputs-unlinked", ["--max-outputs", "4MiB"]),
        ("outputs-files", ["--max-output-files", "50"]),
    ] {
        let mut command = wfrun(state.path());
        let input = json!({ "mode": mode }).to_string();
        command
            .args(["exec", "--outputs", "--timeout", "60s", "--no-fuel", "--json", "--input", &input])
            .args(cap)
            .arg(&hostile);
        // Bounded: a cap that failed would fill the disk; this stops it first.
        let bounded = run_bounded(command, 1024, Duration::from_secs(90));
        assert_eq!(bounded.code, Some(4), "{mode}: {}", bounded.stdout);
        let report: Value = serde_json::from_str(&bounded.stdout).unwrap();
        assert_eq!(
            (report["error_code"].as_str(), report["error_detail"].as_str()),
            (Some("output_limit"), Some("outputs"))
        );
        let run_id = report["run_id"].as_str().unwrap();
        let dir = state.path().join("runs").join(run_id).join("outputs");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "{mode}: the outputs over the cap were removed");
    }
}

#[test]
fn a_daemon_job_or_a_workflow_asking_for_outputs_gets_them() {
    let hostile = guest("hostile");
    let daemon = DaemonProcess::start(&format!(
        "[outputs]\nmax_files = 100\n[jobs.writer]\nbundle = {}\ninput = '{{\"mode\": \"outputs\", \"n\": 2}}'\noutputs = true\n",
        toml_path(&hostile)
    ));
    let run = daemon.wfrun(&["trigger", "writer", "--wait", "--json"]);
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    let record = json(&run);
    assert_eq!(paths(&record["outputs"]), ["out-0.txt", "out-1.txt", "sub/report.json"]);
    let run_id = record["run_id"].as_str().unwrap().to_owned();
    assert!(wait_for(Duration::from_secs(10), || daemon
        .run(&run_id)
        .is_some_and(|r| r.status == RunStatus::Succeeded)));

    // A running run's outputs are neither listed nor copied: its guest may
    // still be changing them.
    assert_eq!(
        daemon
            .wfrun(&[
                "jobs",
                "add",
                "sleeper",
                "--bundle",
                hostile.to_str().unwrap(),
                "--manual",
                "--outputs",
                "--input",
                r#"{"mode": "sleep"}"#
            ])
            .status
            .code(),
        Some(0)
    );
    let sleeping = daemon.wfrun(&["trigger", "sleeper"]);
    let sleeping = String::from_utf8_lossy(&sleeping.stdout).trim().to_owned();
    assert!(wait_for(Duration::from_secs(30), || daemon
        .run(&sleeping)
        .is_some_and(|r| r.status == RunStatus::Running)));
    let to = tempfile::tempdir().unwrap();
    let copy = daemon.wfrun(&["runs", "outputs", &sleeping, "--to", to.path().to_str().unwrap()]);
    assert_eq!(copy.status.code(), Some(6), "{}", stderr(&copy));
    assert_eq!(daemon.wfrun(&["cancel", &sleeping]).status.code(), Some(0));

    // A workflow's [capabilities] outputs = true: exec without --outputs.
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("workflow.toml");
    std::fs::write(
        &manifest,
        format!(
            "name = \"w\"\nversion = \"1\"\n[capabilities]\noutputs = true\n[nodes.write]\ncomponent = {}\n",
            toml_path(&hostile)
        ),
    )
    .unwrap();
    let bundle = dir.path().join("w.wasm");
    let pack = wfrun(dir.path()).args(["pack"]).arg(&manifest).arg("-o").arg(&bundle).output().unwrap();
    assert_eq!(pack.status.code(), Some(0), "{}", stderr(&pack));
    let input = json!({ "mode": "outputs", "n": 1 }).to_string();
    let out = wfrun(dir.path()).args(["exec", "--json", "--input", &input]).arg(&bundle).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(paths(&json(&out)["outputs"]), ["out-0.txt", "sub/report.json"]);
}
