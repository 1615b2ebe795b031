//! `wfrun exec` through the real binary: output, exit statuses, `--json`,
//! and a clear message naming the offending input.

use crate::guests::{guest, root, wat_file};
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Output, Stdio};

/// The `wfrun` binary, with a state directory of this test process's own
/// under `target/` (emptied when the process starts using it).
pub fn wfrun() -> Command {
    static STATE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let state = STATE.get_or_init(|| {
        let dir = root().join("target").join("test-state").join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&dir);
        dir
    });
    let mut command = Command::new(env!("CARGO_BIN_EXE_wfrun"));
    command.current_dir(root()).stdin(Stdio::null()).env("WFRUN_DIR", state);
    command
}

fn run(args: &[&str]) -> Output {
    wfrun().args(args).output().unwrap()
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {}", stdout(output)))
}

#[test]
fn node_output_is_printed_and_exit_status_is_zero() {
    let hello = guest("hello");
    let output = run(&["exec", path(&hello), "--input", r#"{"name":"Ada"}"#]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "{\"greeting\":\"Hello, Ada!\"}\n");
    assert!(stderr(&output).contains("[info] greeting Ada"));
}

#[test]
fn node_input_comes_from_stdin_or_a_file() {
    let hello = guest("hello");
    let mut child = wfrun().args(["exec", path(&hello)]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(br#"{"name":"stdin"}"#).unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(stdout(&output), "{\"greeting\":\"Hello, stdin!\"}\n");

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.json");
    std::fs::write(&input, r#"{"name":"file"}"#).unwrap();
    let output = run(&["exec", path(&hello), "--input-file", path(&input)]);
    assert_eq!(stdout(&output), "{\"greeting\":\"Hello, file!\"}\n");
}

#[test]
fn json_report_describes_the_run() {
    let stats = guest("stats");
    let output = run(&["exec", path(&stats), "--json", "--input", r#"{"values":[2,4]}"#]);
    assert_eq!(output.status.code(), Some(0));
    let report = json(&output);
    assert_eq!(report["status"], "succeeded");
    assert_eq!(report["kind"], "node");
    assert_eq!(report["error_code"], Value::Null);
    assert_eq!(report["error_message"], Value::Null);
    assert_eq!(report["output"]["mean"], 3.0);
    assert_eq!(report["exit_code"], Value::Null);
    assert!(report["run_id"].as_str().unwrap().len() >= 32);
    assert!(report["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(report["fuel_consumed"].as_u64().unwrap() > 0);
    assert!(report["peak_memory_bytes"].as_u64().unwrap() > 0);
    assert!(report["bundle_digest"].as_str().unwrap().starts_with("sha256:"));
}

#[test]
fn jobs_run_like_wasmtime_run() {
    let job = guest("hello-job");
    let output = run(&["exec", path(&job), "--", "Ada", "Grace"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(stdout(&output), "Hello, Ada!\nHello, Grace!\n");
    assert!(stderr(&output).contains("greeted 2 name(s)"));

    let output = run(&["exec", path(&job), "--env", "GREETING=Hi", "--json", "--", "Ada"]);
    let report = json(&output);
    assert_eq!(report["kind"], "job");
    assert_eq!(report["exit_code"], 0);
    assert_eq!(report["stdout"], "Hi, Ada!\n");

    let output = run(&["exec", path(&job), "--", "--fail"]);
    assert_eq!(output.status.code(), Some(1), "a job's failure status passes through");
}

#[test]
fn a_jobs_output_is_echoed_whole_and_in_order_however_much_it_writes() {
    // 20,000 writes: far more than the echo queue holds, so the guest
    // waits for the echo thread many times over.
    let job = guest("hostile-job");
    let output = run(&["exec", path(&job), "--", "count"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let expected: String = (1..=20_000).map(|i| format!("line {i}\n")).collect();
    assert!(stdout(&output) == expected, "stdout differs from the 20,000 lines written");
    assert!(stderr(&output).ends_with("counted\n"), "{}", stderr(&output));
}

/// The processes of process group `group`, as (pid, state), from `/proc`.
#[cfg(target_os = "linux")]
fn group_members(group: u32) -> Vec<(u32, char)> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // After the command name's closing parenthesis: state, ppid, pgrp.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..].split_whitespace().collect();
        if fields[2].parse::<u32>() == Ok(group) {
            members.push((pid, fields[0].chars().next().unwrap()));
        }
    }
    members
}

#[cfg(target_os = "linux")]
#[test]
fn an_exec_leaves_no_process_behind_and_its_output_ends_with_its_exit() {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    // `exec` hands the unmapping of its memory to a helper that outlives
    // it by a moment (runtime::cli::exit). Its output must still end when
    // its exit is reported, its status must be its own, and the helper
    // must go.
    let hello = guest("hello");
    for (input, status) in [(r#"{"name":"Ada"}"#, 0), (r#"{"name": oops"#, 6)] {
        let mut child = wfrun()
            .args(["exec", path(&hello), "--input", input])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let group = child.id();
        // The output (a line) fits in the pipe, so the exit comes first.
        assert_eq!(child.wait().unwrap().code(), Some(status), "{input}");
        // Read without waiting: once the exit is reported no descriptor of
        // the pipe's writing end may be left open anywhere, so this reads
        // to the end at once rather than finding the pipe still open.
        let mut out = child.stdout.take().unwrap();
        rustix::fs::fcntl_setfl(&out, rustix::fs::OFlags::NONBLOCK).unwrap();
        let mut text = String::new();
        out.read_to_string(&mut text).expect("the output's pipe still open after the exit");
        if status == 0 {
            assert_eq!(text, "{\"greeting\":\"Hello, Ada!\"}\n");
        }
        // Nothing of the group runs on (an exited helper waiting to be
        // reaped by init holds no memory).
        let started = std::time::Instant::now();
        loop {
            let running: Vec<_> = group_members(group).into_iter().filter(|(_, state)| *state != 'Z').collect();
            if running.is_empty() {
                break;
            }
            assert!(started.elapsed().as_secs() < 10, "{input}: left running: {running:?}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

#[test]
fn each_failure_class_has_its_documented_exit_status() {
    let hostile = guest("hostile");
    let cases = [
        (r#"{"mode":"fail"}"#, 3, "node_error"),
        (r#"{"mode":"loop"}"#, 4, "fuel_exhausted"),
        (r#"{"mode":"trap"}"#, 5, "trap"),
        (r#"{"mode": oops"#, 6, "invalid_input"),
    ];
    for (input, status, code) in cases {
        let output = run(&["exec", path(&hostile), "--json", "--fuel", "100000000", "--input", input]);
        assert_eq!(output.status.code(), Some(status), "{input}: {}", stderr(&output));
        assert_eq!(json(&output)["error_code"], code, "{input}");
    }
}

#[test]
fn limit_flags_take_human_units() {
    let hostile = guest("hostile");
    let output =
        run(&["exec", path(&hostile), "--json", "--no-fuel", "--timeout", "200ms", "--input", r#"{"mode":"loop"}"#]);
    assert_eq!(output.status.code(), Some(4));
    assert_eq!(json(&output)["error_code"], "timeout");

    let output = run(&["exec", path(&hostile), "--json", "--memory", "8MiB", "--input", r#"{"mode":"grow"}"#]);
    let report = json(&output);
    assert_eq!(report["error_code"], "memory_limit");
    assert!(report["peak_memory_bytes"].as_u64().unwrap() <= 8 * 1024 * 1024);

    let output = run(&["exec", path(&hostile), "--memory", "a lot"]);
    assert_eq!(output.status.code(), Some(2), "a malformed flag is a usage error");
}

#[test]
fn bad_bundles_are_named_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "not wasm at all").unwrap();
    let missing = dir.path().join("missing.wasm");
    let cases = [
        (missing, "missing"),
        (text, "not_wasm"),
        (wat_file(dir.path(), "core-module"), "core_module"),
        (wat_file(dir.path(), "empty-component"), "no_known_world"),
    ];
    for (bundle, detail) in cases {
        let output = run(&["exec", path(&bundle), "--json"]);
        assert_eq!(output.status.code(), Some(6), "{}", bundle.display());
        let report = json(&output);
        assert_eq!((&report["error_code"], &report["error_detail"]), (&"invalid_bundle".into(), &detail.into()));
        // The message must name the file so a person can find it; scripts
        // match error_code and error_detail.
        let message = report["error_message"].as_str().unwrap();
        assert!(message.contains(path(&bundle)), "{message}");
    }
}

#[test]
fn bad_input_is_named_with_the_reason() {
    let hello = guest("hello");
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\"name\": ").unwrap();
    let absent = dir.path().join("absent.json");
    for (file, reason) in [(&broken, "malformed JSON"), (&absent, "no such file")] {
        let output = run(&["exec", path(&hello), "--input-file", path(file)]);
        assert_eq!(output.status.code(), Some(6));
        let message = stderr(&output);
        assert!(
            message.contains("invalid_input") && message.contains(path(file)) && message.contains(reason),
            "{message}"
        );
    }

    let output = run(&["exec", path(&hello), "--dir", "/no/such/dir::/data", "--json"]);
    assert_eq!(json(&output)["error_code"], "invalid_input");
    let output = run(&["exec", path(&hello), "--", "stray", "args"]);
    assert_eq!(output.status.code(), Some(6));
}

/// A reader that stalls must slow the guest down, not freeze the host: the
/// run still ends at its deadline. Without backpressure the guest would be
/// stuck in a blocking write until the reader came back, then flood on.
#[test]
fn a_stalled_reader_cannot_stop_the_deadline() {
    let job = guest("hostile-job");
    let child = wfrun()
        .args(["exec", path(&job), "--json", "--timeout", "500ms", "--max-stdio", "64MiB", "--", "stderr"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Nobody reads stderr for two seconds: the pipe fills and stays full.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let output = child.wait_with_output().unwrap();
    let report = json(&output);
    assert_eq!(report["error_code"], "timeout", "{}", report["error_message"]);
    assert!(report["duration_ms"].as_f64().unwrap() < 1900.0, "{}", report["duration_ms"]);
    assert_eq!(output.status.code(), Some(4));
}

/// Ctrl-C stops a busy guest, records the run `cancelled`, and exits 130.
#[cfg(unix)]
#[test]
fn ctrl_c_cancels_the_run_and_records_it() {
    let hostile = guest("hostile");
    let state = tempfile::tempdir().unwrap();
    let child = wfrun()
        .env("WFRUN_DIR", state.path())
        .args(["exec", "-q", path(&hostile), "--no-fuel", "--timeout", "60s", "--input", r#"{"mode":"loop"}"#])
        .spawn()
        .unwrap();
    // Once the run is recorded (compiling comes first, and on a busy
    // machine takes a while), the guest is looping under the handler.
    let recorded = || {
        let list = wfrun().env("WFRUN_DIR", state.path()).args(["runs", "list", "--json"]).output().unwrap();
        serde_json::from_slice::<Vec<Value>>(&list.stdout).is_ok_and(|runs| runs.len() == 1)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !recorded() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130));
    let list = wfrun().env("WFRUN_DIR", state.path()).args(["runs", "list", "--json"]).output().unwrap();
    let runs: Vec<Value> = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["status"], "cancelled");
    assert!(runs[0]["duration_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn help_documents_defaults_and_exit_statuses() {
    let help = stdout(&run(&["exec", "--help"]));
    for expected in
        ["[default: 128MiB]", "[default: 30s]", "[default: 10000000000]", "Exit status:", "HOST::GUEST", "130"]
    {
        assert!(help.contains(expected), "--help lacks {expected:?}");
    }
}

#[test]
fn runs_of_exec_keep_the_write_ahead_log_short() {
    // Each `exec` opens the database on a thread of its own, which keeps a
    // handle on it for a while; the store must still close (folding a long
    // WAL into the database) before the process exits, or every later
    // `exec` reads an ever longer WAL.
    let dir = tempfile::tempdir().unwrap();
    let job = guest("hello-job");
    let wal = dir.path().join("wfrun.db-wal");
    let mut longest = 0;
    for _ in 0..24 {
        let output = wfrun().env("WFRUN_DIR", dir.path()).args(["exec", path(&job), "--", "Ada"]).output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        longest = longest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
    }
    assert!(longest < wfrun_runtime::store::SHORT_LIVED_WAL_BYTES, "the WAL reached {longest} bytes after an exec");
    let db = rusqlite::Connection::open(dir.path().join("wfrun.db")).unwrap();
    let runs: i64 = db.query_row("SELECT COUNT(*) FROM runs WHERE status = 'succeeded'", [], |r| r.get(0)).unwrap();
    assert_eq!(runs, 24, "every run recorded");
}
