//! `wfrun mcp`: an MCP client's JSON-RPC over the server's stdio, driving a
//! real daemon and `exec`, and refusing what the server was not given.

use crate::daemon::DaemonProcess;
use crate::guests::guest;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// A `wfrun mcp` process and the client side of its stdio.
struct Mcp {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
}

impl Mcp {
    /// Starts `wfrun --state-dir STATE mcp ARGS` and initializes the session.
    fn start(state: &std::path::Path, args: &[&str]) -> Mcp {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wfrun"))
            .arg("--state-dir")
            .arg(state)
            .arg("mcp")
            .args(args)
            .env("WFRUN_CLIENT_CONFIG", "/nonexistent/wfrun-client.toml")
            .env_remove("WFRUN_REMOTE")
            .env_remove("WFRUN_PROFILE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut mcp = Mcp { child, stdin, stdout, next_id: 1 };
        let init = mcp.request(
            "initialize",
            json!({ "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": { "name": "test", "version": "1" } }),
        );
        assert_eq!(init["result"]["serverInfo"]["name"], "wfrun", "{init}");
        assert!(init["result"]["capabilities"]["tools"].is_object(), "{init}");
        mcp.send(&json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }));
        mcp
    }

    fn send(&mut self, message: &Value) {
        writeln!(self.stdin, "{message}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Sends one request and returns its response (skipping notifications).
    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }));
        loop {
            let mut line = String::new();
            assert!(self.stdout.read_line(&mut line).unwrap() > 0, "the server closed stdout");
            let message: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON-RPC ({e}): {line}"));
            if message["id"] == id {
                return message;
            }
        }
    }

    /// Calls tool `name`: (is_error, structured content), or the JSON-RPC error.
    fn call(&mut self, name: &str, arguments: Value) -> Result<(bool, Value), Value> {
        let response = self.request("tools/call", json!({ "name": name, "arguments": arguments }));
        if !response["error"].is_null() {
            return Err(response["error"].clone());
        }
        let result = &response["result"];
        Ok((result["isError"] == true, result["structuredContent"].clone()))
    }
}

impl Drop for Mcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_agent_drives_the_daemon_and_execs_bundles_through_mcp() {
    let daemon = DaemonProcess::start("");
    let mut mcp = Mcp::start(&daemon.state(), &["--", "--memory", "4MiB"]);
    let tools = mcp.request("tools/list", json!({}));
    let names: Vec<&str> =
        tools["result"]["tools"].as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    for expected in [
        "status",
        "runs_list",
        "runs_show",
        "runs_logs",
        "jobs_list",
        "jobs_add",
        "jobs_pause",
        "jobs_resume",
        "trigger",
        "cancel",
        "exec",
    ] {
        assert!(names.contains(&expected), "no tool {expected}: {names:?}");
    }

    let hello = guest("hello");
    let spec = json!({ "bundle": hello, "trigger": "manual", "input": r#"{"name":"agent"}"# });
    assert!(!mcp.call("jobs_add", json!({ "name": "greet", "spec": spec })).unwrap().0);
    let (error, run) = mcp.call("trigger", json!({ "name": "greet", "wait": true })).unwrap();
    assert!(!error, "{run}");
    assert_eq!((run["status"].as_str(), run["exit_status"].as_u64()), (Some("succeeded"), Some(0)));
    assert_eq!(run["output"], r#"{"greeting":"Hello, agent!"}"#);
    let run_id = run["run_id"].as_str().unwrap();
    let (_, shown) = mcp.call("runs_show", json!({ "run_id": run_id })).unwrap();
    assert_eq!(shown["job"], "greet");
    let (_, listed) = mcp.call("runs_list", json!({ "limit": 5 })).unwrap();
    assert_eq!(listed["items"][0]["run_id"], run_id);
    assert!(!mcp.call("jobs_pause", json!({ "name": "greet" })).unwrap().0);
    let (error, refused) = mcp.call("trigger", json!({ "name": "greet" })).unwrap();
    assert!(error);
    assert_eq!(refused["error"]["code"], "paused");
    let (_, status) = mcp.call("status", json!({})).unwrap();
    assert_eq!(status["jobs"][0]["paused"], true);
    let (error, missing) = mcp.call("cancel", json!({ "run_id": "no-such-run" })).unwrap();
    assert!(error, "{missing}");

    // exec: the bundle runs, recorded like any exec.
    let (error, report) = mcp.call("exec", json!({ "bundle": hello, "input": { "name": "mcp" } })).unwrap();
    assert!(!error, "{report}");
    assert_eq!(report["output"], json!({ "greeting": "Hello, mcp!" }));
    assert!(daemon.run(report["run_id"].as_str().unwrap()).is_some(), "exec's run is in the history");
}

#[test]
fn the_exec_tool_has_only_the_servers_limits_and_grants() {
    let state = tempfile::tempdir().unwrap();
    let hostile = guest("hostile");
    let mut mcp = Mcp::start(state.path(), &["--", "--memory", "4MiB"]);
    // The server's 4 MiB hold: the same code `wfrun exec --memory 4MiB` gives.
    let (error, report) = mcp.call("exec", json!({ "bundle": hostile, "input": { "mode": "grow" } })).unwrap();
    assert!(error, "{report}");
    assert_eq!((report["error_code"].as_str(), report["exit_status"].as_u64()), (Some("memory_limit"), Some(4)));
    let by_hand = Command::new(env!("CARGO_BIN_EXE_wfrun"))
        .arg("--state-dir")
        .arg(state.path())
        .args(["exec", "--memory", "4MiB", "--json", "--input", r#"{"mode": "grow"}"#])
        .arg(&hostile)
        .output()
        .unwrap();
    let by_hand: Value = serde_json::from_slice(&by_hand.stdout).unwrap();
    assert_eq!(by_hand["error_code"], report["error_code"]);
    // A guest asking for what was not granted is refused as under exec: no
    // directory was given, so none is there.
    let (_, files) = mcp.call("exec", json!({ "bundle": hostile, "input": { "mode": "files" } })).unwrap();
    let files = &files["output"];
    assert_eq!((files["listing"].clone(), files["read"].clone()), (json!([]), Value::Null), "{files}");
    assert!(files["write"].as_str().is_some_and(|w| w.starts_with("denied")), "{files}");
    let (_, ambient) = mcp.call("exec", json!({ "bundle": hostile, "input": { "mode": "ambient" } })).unwrap();
    let ambient = &ambient["output"];
    for key in ["read_root", "read_passwd", "write_tmp", "tcp_connect"] {
        assert!(ambient[key].as_str().is_some_and(|v| v.starts_with("denied")), "{key}: {ambient}");
    }
    assert_eq!(ambient["env_count"], 0);
    // No argument can widen a grant: anything beyond bundle, input and args
    // is refused before anything runs.
    for extra in [json!({ "memory": "1GiB" }), json!({ "dir": "/::/host" }), json!({ "flags": ["--allow-host", "*"] })]
    {
        let mut arguments = json!({ "bundle": hostile });
        arguments.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let refused = mcp.call("exec", arguments).unwrap_err();
        assert_eq!(refused["code"], -32602, "{refused}");
    }
    // An argument cannot pass for a flag either: it is a bundle path.
    let (error, report) = mcp.call("exec", json!({ "bundle": "--allow-host=*" })).unwrap();
    assert!(error && report["error_code"] == "invalid_bundle", "{report}");
}

#[test]
fn a_read_only_server_offers_only_reading_tools_and_a_wait_has_a_deadline() {
    let hostile = guest("hostile");
    let daemon = DaemonProcess::start(&format!(
        "[jobs.napper]\nbundle = {}\ninput = '{{\"mode\": \"nap\", \"n\": 3000}}'\n",
        crate::daemon::toml_path(&hostile)
    ));
    let mut reader = Mcp::start(&daemon.state(), &["--read-only"]);
    let tools = reader.request("tools/list", json!({}));
    let mut names: Vec<&str> =
        tools["result"]["tools"].as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    names.sort();
    assert_eq!(names, ["jobs_list", "runs_list", "runs_logs", "runs_show", "status"]);
    for (tool, arguments) in [("jobs_pause", json!({ "name": "napper" })), ("trigger", json!({ "name": "napper" }))] {
        assert_eq!(reader.call(tool, arguments).unwrap_err()["code"], -32602, "{tool}");
    }
    assert_eq!(daemon.runs().len(), 0, "nothing ran");

    let mut mcp = Mcp::start(&daemon.state(), &["--no-exec"]);
    let (error, answer) = mcp.call("trigger", json!({ "name": "napper", "wait": true, "wait_s": 1 })).unwrap();
    assert!(error, "{answer}");
    assert_eq!(answer["error"]["code"], "still_running", "{answer}");
    let run_id = answer["run_id"].as_str().unwrap().to_owned();
    let ended = || daemon.run(&run_id).is_some_and(|r| r.status == wfrun_runtime::outcome::RunStatus::Succeeded);
    assert!(crate::daemon::wait_for(std::time::Duration::from_secs(30), ended), "the run goes on past the wait");
}

#[test]
fn the_server_refuses_exec_flags_it_must_set_itself_and_can_offer_no_exec() {
    let state = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_wfrun"))
            .arg("--state-dir")
            .arg(state.path())
            .arg("mcp")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        out.status.code()
    };
    assert_eq!(run(&["--", "--input", "{}"]), Some(2));
    assert_eq!(run(&["--", "--no-such-flag"]), Some(2));
    assert_eq!(run(&["--", "other.wasm"]), Some(2), "a bundle among the flags");
    let mut mcp = Mcp::start(state.path(), &["--no-exec"]);
    let tools = mcp.request("tools/list", json!({}));
    let names: Vec<&str> =
        tools["result"]["tools"].as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    assert!(!names.contains(&"exec"), "{names:?}");
    assert!(mcp.call("exec", json!({ "bundle": "x.wasm" })).is_err());
}
