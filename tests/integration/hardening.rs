//! Regression tests for the attacks of the hardening issue: each test is
//! named after what it guards, and failed on the code before its fix.

use crate::daemon::{DaemonProcess, free_port, wait_for};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Sends a request's head declaring `length` body bytes and none of them;
/// the answer's status, if one comes within `wait`.
fn declare_only(port: u16, path: &str, headers: &str, length: usize, wait: Duration) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Content-Length: {length}\r\n\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = [0u8; 12];
    stream.read_exact(&mut answer).ok()?;
    String::from_utf8_lossy(&answer[9..12]).parse().ok()
}

#[test]
fn the_control_api_refuses_a_caller_without_the_token_before_reading_its_body() {
    let port = free_port();
    let daemon = DaemonProcess::start(&format!("[control_http]\nlisten = \"127.0.0.1:{port}\"\n"));
    assert!(wait_for(Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", port)).is_ok()));
    // A 1 MiB body is announced and never sent: the answer cannot wait for it.
    assert_eq!(declare_only(port, "/v1/rpc", "", 1 << 20, Duration::from_secs(10)), Some(401));
    let wrong = format!("Authorization: Bearer {}\r\n", "f".repeat(64));
    assert_eq!(declare_only(port, "/v1/rpc", &wrong, 1 << 20, Duration::from_secs(10)), Some(401));
    // With the token the body is read (and here it never comes: no answer).
    let token = std::fs::read_to_string(daemon.state().join("control.token")).unwrap();
    let right = format!("Authorization: Bearer {}\r\n", token.trim());
    assert_eq!(declare_only(port, "/v1/rpc", &right, 100, Duration::from_secs(2)), None);
}

/// What a bounded run of a process ended with.
pub struct Bounded {
    pub code: Option<i32>,
    pub stdout: String,
    peak_rss_mib: u64,
    elapsed: Duration,
}

/// Runs `command` with a watch: killed (and the test failed) past
/// `max_rss_mib` resident or `timeout`.
pub fn run_bounded(mut command: std::process::Command, max_rss_mib: u64, timeout: Duration) -> Bounded {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("stdout");
    command.stdout(std::fs::File::create(&out).unwrap()).stderr(std::process::Stdio::null());
    let started = std::time::Instant::now();
    let mut child = command.spawn().unwrap();
    let mut peak = 0;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        peak = peak.max(rss_kib / 1024);
        if peak > max_rss_mib || started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("killed: {peak} MiB resident after {:?}", started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Bounded { code, stdout: std::fs::read_to_string(out).unwrap(), peak_rss_mib: peak, elapsed: started.elapsed() }
}

fn leb(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        out.push(if n == 0 { byte } else { byte | 0x80 });
        if n == 0 {
            return;
        }
    }
}

const COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

/// A component nested `depth` levels deep (20,000 levels: 238 KB).
fn nested_components(depth: usize) -> Vec<u8> {
    let mut sizes = vec![COMPONENT.len()];
    for _ in 1..depth {
        let inner = *sizes.last().unwrap();
        let mut prefix = vec![4];
        leb(inner, &mut prefix);
        sizes.push(COMPONENT.len() + prefix.len() + inner);
    }
    let mut bytes = Vec::new();
    for inner in sizes.iter().rev().skip(1) {
        bytes.extend_from_slice(COMPONENT);
        bytes.push(4);
        leb(*inner, &mut bytes);
    }
    bytes.extend_from_slice(COMPONENT);
    bytes
}

/// A component holding a core module whose one function nests `depth`
/// blocks (a million: 3 MB).
fn deep_blocks(depth: usize) -> Vec<u8> {
    let mut body = vec![0]; // no locals
    for _ in 0..depth {
        body.extend_from_slice(&[0x02, 0x40]); // block (empty type)
    }
    body.extend(std::iter::repeat_n(0x0b, depth + 1)); // the ends, and the function's
    let mut code = vec![1];
    leb(body.len(), &mut code);
    code.extend_from_slice(&body);
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    module.extend_from_slice(&[1, 4, 1, 0x60, 0, 0]); // type section: () -> ()
    module.extend_from_slice(&[3, 2, 1, 0]); // function section: one of type 0
    module.push(10);
    leb(code.len(), &mut module);
    module.extend_from_slice(&code);
    let mut component = COMPONENT.to_vec();
    component.push(1); // a core module section
    leb(module.len(), &mut component);
    component.extend_from_slice(&module);
    component
}

#[test]
fn a_component_nested_deep_or_with_deep_blocks_is_refused_before_compilation() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [("nested.wasm", nested_components(20_000)), ("blocks.wasm", deep_blocks(1_000_000))] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let mut command = crate::exec::wfrun();
        command.arg("exec").arg(&path).arg("--json");
        // Before the fix: 7.9 GB and 30 s, and 893 MB.
        let ended = run_bounded(command, 400, Duration::from_secs(30));
        assert_eq!(ended.code, Some(6), "{name}: {}", ended.stdout);
        let report: serde_json::Value = serde_json::from_str(&ended.stdout).unwrap();
        assert_eq!(
            (report["error_code"].as_str(), report["error_detail"].as_str()),
            (Some("invalid_bundle"), Some("component_too_complex")),
            "{name}"
        );
        eprintln!("{name}: refused in {:?}, peak {} MiB", ended.elapsed, ended.peak_rss_mib);
    }
}

#[test]
fn idle_connections_to_the_webhook_listener_cannot_starve_or_pause_a_job() {
    use crate::daemon::toml_path;
    use wfrun_runtime::outcome::RunStatus;
    let dir = tempfile::tempdir().unwrap();
    let hello = dir.path().join("hello.wasm");
    std::fs::copy(crate::guests::guest("hello"), &hello).unwrap();
    let port = free_port();
    let config = format!(
        "[webhook]\nlisten = \"127.0.0.1:{port}\"\n\
         [jobs.tick]\nbundle = {b}\nevery = \"100ms\"\ninput = '{{\"name\": \"x\"}}'\n\
         [jobs.hook]\nbundle = {b}\nwebhook = true\n",
        b = toml_path(&hello)
    );
    // 256 descriptors: before the fix, 1,100 idle connections took them
    // all, the job's runs failed as `invalid_bundle` and it was paused.
    let daemon =
        DaemonProcess::spawn_under(&["prlimit", "--nofile=256:256", "--"], tempfile::tempdir().unwrap(), &config, &[]);
    let socket = daemon.state().join("wfrun.sock");
    assert!(wait_for(Duration::from_secs(30), || std::os::unix::net::UnixStream::connect(&socket).is_ok()));
    let succeeded = || {
        daemon.runs().iter().filter(|r| r.job.as_deref() == Some("tick") && r.status == RunStatus::Succeeded).count()
    };
    assert!(wait_for(Duration::from_secs(30), || succeeded() > 0));

    let idle: Vec<TcpStream> = (0..1100).filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok()).collect();
    let before = succeeded();
    std::thread::sleep(Duration::from_secs(3));
    let during = succeeded();
    assert!(during >= before + 10, "the job kept running during the flood ({before} → {during})");
    let failed: Vec<_> = daemon.runs().into_iter().filter(|r| r.status == RunStatus::Failed).collect();
    assert!(failed.is_empty(), "no run failed: {:?}", failed.iter().map(|r| r.error_code).collect::<Vec<_>>());
    drop(idle);

    // The listener serves again once the flood ends.
    let answered = || {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
        let request =
            "POST /hooks/hook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
        let mut answer = String::new();
        stream.write_all(request.as_bytes()).is_ok()
            && stream.read_to_string(&mut answer).is_ok()
            && answer.starts_with("HTTP/1.1 202")
    };
    assert!(wait_for(Duration::from_secs(40), answered));
    let out = daemon.wfrun(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tick = status["result"]["jobs"].as_array().unwrap().iter().find(|j| j["name"] == "tick").unwrap().clone();
    assert_eq!(tick["paused"], false, "{tick}");
}

#[test]
fn devices_fifos_and_huge_files_are_refused_before_reading_them() {
    let dir = tempfile::tempdir().unwrap();
    let hello = crate::guests::guest("hello");
    let hello = hello.to_str().unwrap();
    let sparse = dir.path().join("sparse.wasm");
    let file = std::fs::File::create(&sparse).unwrap();
    file.set_len(20 * 1024 * 1024 * 1024).unwrap(); // 20 GB, all holes
    let fifo = dir.path().join("fifo.wasm");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let (sparse, fifo) = (sparse.to_str().unwrap(), fifo.to_str().unwrap());

    // (arguments, expected exit status, expected error detail if a run is reported)
    let cases: [(&[&str], i32, Option<&str>); 8] = [
        (&["exec", "/dev/zero", "--json"], 6, Some("not_a_file")),
        (&["exec", sparse, "--json"], 6, Some("too_large")),
        (&["exec", fifo, "--json"], 6, Some("not_a_file")),
        (&["exec", hello, "--input-file", "/dev/zero"], 6, None),
        (&["exec", hello, "--secrets-file", "/dev/zero"], 6, None),
        (&["exec", hello, "--policy", "/dev/zero"], 6, None),
        (&["exec", hello, "--trust", "/dev/zero"], 6, None),
        (&["exec", hello, "--input-file", fifo], 6, None),
    ];
    for (args, status, detail) in cases {
        let mut command = crate::exec::wfrun();
        command.args(args);
        // Before the fix: 10 GB in 30 s, or blocked forever on the FIFO.
        let ended = run_bounded(command, 300, Duration::from_secs(20));
        assert_eq!(ended.code, Some(status), "{args:?}: {}", ended.stdout);
        if let Some(detail) = detail {
            let report: serde_json::Value = serde_json::from_str(&ended.stdout).unwrap();
            assert_eq!(report["error_detail"], detail, "{args:?}");
        }
    }

    // Input piped from /dev/zero stops at the input cap (64 MiB).
    let mut command = crate::exec::wfrun();
    command.args(["exec", hello]).stdin(std::fs::File::open("/dev/zero").unwrap());
    let ended = run_bounded(command, 600, Duration::from_secs(30));
    assert_eq!(ended.code, Some(6));
}

#[test]
fn state_files_are_private_whatever_the_umask_and_a_loose_state_dir_is_tightened() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    // `wfrun exec BUNDLE --input INPUT` on `state` under umask 000.
    let exec = |bundle: &std::path::Path, input: &str| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg("umask 000 && exec \"$0\" --state-dir \"$1\" exec \"$2\" --input \"$3\"")
            .arg(env!("CARGO_BIN_EXE_wfrun"))
            .arg(&state)
            .arg(bundle)
            .arg(input)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
    };
    // umask 000: before the fix, wfrun.db was 0666 and logs/ 0777.
    assert!(exec(&crate::guests::guest("hello"), r#"{"name":"x"}"#).success());
    // A node whose log is too large for the database gets a log file.
    let status = exec(&crate::guests::guest("hostile"), r#"{"mode":"log"}"#);
    assert_eq!(status.code(), Some(4), "the flood of log lines ends at the cap (output_limit)");
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert!(std::fs::read_dir(state.join("logs")).unwrap().count() == 1, "one run's log directory");
    assert_eq!(mode(&state), 0o700, "the 0777 state directory was tightened");
    assert_eq!(mode(&state.join("wfrun.db")), 0o600);
    let mut checked = 0;
    for entry in walk(&state) {
        let m = mode(&entry);
        let expected = if entry.is_dir() { 0o700 } else { 0o600 };
        if entry.file_name().is_some_and(|n| n == "wfrun.sock") {
            continue;
        }
        assert_eq!(m, expected, "{}", entry.display());
        checked += 1;
    }
    assert!(checked >= 4, "the database, its WAL, logs/ and a log file at least ({checked})");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(walk(&path));
        }
        found.push(path);
    }
    found
}

#[test]
fn a_state_directory_owned_by_another_user_is_refused() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let me = std::fs::metadata(dir.path()).unwrap().uid();
    // Only root can give a directory away; as another user, make one that
    // root owns instead: /tmp's parent is root's.
    let foreign = if me == 0 {
        let chowned = std::process::Command::new("chown").arg("65534").arg(&state).status().unwrap();
        assert!(chowned.success());
        state.clone()
    } else {
        std::path::PathBuf::from("/")
    };
    let out = crate::exec::wfrun()
        .arg("--state-dir")
        .arg(&foreign)
        .args(["exec", crate::guests::guest("hello").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "a state directory another user owns is not used");
    assert!(!foreign.join("wfrun.db").exists());
    // Nor is an artifact cache made in it: the check comes before the
    // database opens beside the engine's start (which reads the cache).
    if foreign == state {
        assert!(!foreign.join("cache").exists());
    }
}

#[test]
fn exec_refuses_to_run_a_job_it_could_not_record() {
    // A database from a newer wfrun: the job must not run (its effects would
    // go unrecorded), and the exit status says wfrun failed.
    let dir = tempfile::tempdir().unwrap();
    let job = crate::guests::guest("hello-job");
    let exec = || {
        crate::exec::wfrun()
            .arg("--state-dir")
            .arg(dir.path())
            .args(["exec", job.to_str().unwrap(), "--", "bench"])
            .output()
            .unwrap()
    };
    let first = exec();
    assert_eq!(first.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&first.stdout).contains("Hello, bench!"));
    let db = rusqlite::Connection::open(dir.path().join("wfrun.db")).unwrap();
    let version: u32 = db.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    db.pragma_update(None, "user_version", version + 1).unwrap();
    drop(db);
    let refused = exec();
    assert_eq!(refused.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&refused.stdout).contains("Hello"), "the job ran");
}

#[test]
fn a_ten_thousand_node_workflow_packs_and_inspects_in_linear_time() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(crate::guests::guest("hello"), dir.path().join("hello.wasm")).unwrap();
    let mut text = String::from("name = \"big\"\nversion = \"1\"\n");
    for i in 0..10_000 {
        text += &format!("[nodes.n{i:05}]\ncomponent = \"hello.wasm\"\n");
        if i > 0 {
            text += &format!("depends_on = [\"n{:05}\"]\n", i - 1);
        }
    }
    std::fs::write(dir.path().join("workflow.toml"), &text).unwrap();
    let bundle = dir.path().join("big.wasm");
    // Before the fix: 42 s to pack and 20 s to inspect (quadratic planning,
    // and each node's component loaded again). The bound is generous.
    let mut pack = crate::exec::wfrun();
    pack.arg("pack").arg(dir.path().join("workflow.toml")).arg("-o").arg(&bundle);
    assert_eq!(run_bounded(pack, 500, Duration::from_secs(15)).code, Some(0));
    let mut inspect = crate::exec::wfrun();
    inspect.arg("inspect").arg(&bundle).arg("--json");
    let ended = run_bounded(inspect, 500, Duration::from_secs(15));
    assert_eq!(ended.code, Some(0));
    let info: serde_json::Value = serde_json::from_str(&ended.stdout).unwrap();
    assert_eq!(
        info["nodes"].as_array().map(Vec::len),
        Some(10_000),
        "{}",
        &ended.stdout[..200.min(ended.stdout.len())]
    );

    // One node more than the cap is refused, with the field named.
    text += "[nodes.n10000]\ncomponent = \"hello.wasm\"\n";
    std::fs::write(dir.path().join("workflow.toml"), &text).unwrap();
    let out =
        crate::exec::wfrun().arg("pack").arg(dir.path().join("workflow.toml")).arg("-o").arg(&bundle).output().unwrap();
    assert_eq!(out.status.code(), Some(6));
}

#[test]
fn pack_refuses_to_overwrite_its_own_workflow_or_any_file_that_is_not_a_bundle() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(crate::guests::guest("hello"), dir.path().join("hello.wasm")).unwrap();
    let manifest = dir.path().join("workflow.toml");
    let text = "name = \"w\"\nversion = \"1\"\n[nodes.a]\ncomponent = \"hello.wasm\"\n";
    std::fs::write(&manifest, text).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "keep me").unwrap();
    for target in [manifest.clone(), dir.path().join("notes.txt")] {
        let out = crate::exec::wfrun().arg("pack").arg(&manifest).arg("-o").arg(&target).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", target.display());
    }
    assert_eq!(std::fs::read_to_string(&manifest).unwrap(), text);
    assert_eq!(std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(), "keep me");
    // A new file, or an existing bundle, is fine.
    let out =
        crate::exec::wfrun().arg("pack").arg(&manifest).arg("-o").arg(dir.path().join("w.wasm")).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let out =
        crate::exec::wfrun().arg("pack").arg(&manifest).arg("-o").arg(dir.path().join("w.wasm")).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn a_state_value_of_the_wrong_sqlite_type_is_a_host_error_not_a_guest_trap() {
    let counter = crate::guests::guest("counter");
    let state = tempfile::tempdir().unwrap();
    let exec = || {
        let out = crate::exec::wfrun()
            .env("WFRUN_DIR", state.path())
            .args(["exec", "--json", counter.to_str().unwrap()])
            .output()
            .unwrap();
        (out.status.code(), serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap())
    };
    let (code, first) = exec();
    assert_eq!(code, Some(0), "{first}");
    let db = rusqlite::Connection::open(state.path().join("wfrun.db")).unwrap();
    // Another tool wrote a REAL where wfrun keeps bytes.
    let changed = db.execute("UPDATE state SET value = 3.5", []).unwrap();
    assert!(changed > 0);
    let (code, report) = exec();
    assert_eq!(report["error_code"], "host_error", "{report}");
    assert_eq!(code, Some(1));
    // TEXT is taken as its bytes.
    db.execute("UPDATE state SET value = CAST(value AS TEXT)", []).unwrap();
    db.execute("UPDATE state SET value = '41'", []).unwrap();
    let (code, report) = exec();
    assert_eq!((code, &report["output"]["count"]), (Some(0), &serde_json::json!(42)), "{report}");
}

#[test]
fn a_cache_entry_path_that_is_a_directory_leaves_no_temporary_files() {
    let state = tempfile::tempdir().unwrap();
    let hello = crate::guests::guest("hello");
    let exec = || {
        let out = crate::exec::wfrun()
            .env("WFRUN_DIR", state.path())
            .args(["exec", "-q", hello.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
    };
    exec();
    let cache = state.path().join("cache");
    let artifacts: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(artifacts.len(), 1);
    std::fs::remove_file(&artifacts[0]).unwrap();
    std::fs::create_dir(&artifacts[0]).unwrap();
    for _ in 0..3 {
        exec();
    }
    // The directory where the artifact belongs, and its meta file: no
    // temporary file is left behind (beside the remembered bundle digests).
    let left: Vec<_> =
        std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().file_name()).filter(|name| name != "digests").collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

#[test]
fn runs_prune_keeps_the_newest_runs_and_removes_the_rest_with_their_logs() {
    let state = tempfile::tempdir().unwrap();
    let hello = crate::guests::guest("hello");
    for _ in 0..3 {
        let out = crate::exec::wfrun()
            .env("WFRUN_DIR", state.path())
            .args(["exec", "-q", hello.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
    }
    // hello logs a line: kept in the database. The hostile node floods its
    // log: a file. Three runs of each.
    let hostile = crate::guests::guest("hostile");
    for _ in 0..3 {
        let out = crate::exec::wfrun()
            .env("WFRUN_DIR", state.path())
            .args(["exec", "-q", hostile.to_str().unwrap(), "--input", r#"{"mode":"log"}"#])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(4));
    }
    let store = wfrun_runtime::store::Store::open(state.path()).unwrap();
    let ids: Vec<String> = store.list_runs(None, 100).unwrap().into_iter().map(|r| r.run_id).collect();
    let hello_runs: Vec<&String> = ids.iter().filter(|id| !store.inline_logs(id).unwrap().is_empty()).collect();
    assert_eq!(hello_runs.len(), 3, "hello's line is in the database");
    let logs = || std::fs::read_dir(state.path().join("logs")).unwrap().count();
    assert_eq!(logs(), 3, "each flood is a file");
    let out = crate::exec::wfrun()
        .env("WFRUN_DIR", state.path())
        .args(["runs", "prune", "--keep", "1", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let pruned: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((pruned["runs"].as_u64(), pruned["log_dirs"].as_u64()), (Some(5), Some(2)));
    assert_eq!(logs(), 1, "the newest run's log file stays");
    let out = crate::exec::wfrun().env("WFRUN_DIR", state.path()).args(["runs", "list", "--json"]).output().unwrap();
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs.len(), 1);
    assert!(hello_runs.iter().all(|id| store.inline_logs(id).unwrap().is_empty()), "their logs went with them");
    let bad = crate::exec::wfrun()
        .env("WFRUN_DIR", state.path())
        .args(["runs", "prune", "--older-than", "soon"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn a_bundle_refused_as_invalid_is_not_retried() {
    use crate::daemon::toml_path;
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("notes.wasm");
    std::fs::write(&bundle, "not wasm").unwrap();
    let daemon = DaemonProcess::start(&format!(
        "[retry]\ninitial_backoff = \"50ms\"\nmax_attempts = 3\n[jobs.bad]\nbundle = {}\n",
        toml_path(&bundle)
    ));
    let out = daemon.wfrun(&["trigger", "bad"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(wait_for(Duration::from_secs(10), || !daemon.runs().is_empty()));
    // Retries would come after 50 and 100 ms.
    std::thread::sleep(Duration::from_millis(1000));
    let runs = daemon.runs();
    assert_eq!(runs.len(), 1, "{:?}", runs.iter().map(|r| r.error_code).collect::<Vec<_>>());
    assert_eq!(runs[0].error_code, Some(wfrun_runtime::outcome::ErrorCode::InvalidBundle));
}

#[test]
fn concurrent_runs_of_the_counter_lose_no_update() {
    let counter = crate::guests::guest("counter");
    let state = tempfile::tempdir().unwrap();
    let exec = || {
        crate::exec::wfrun()
            .env("WFRUN_DIR", state.path())
            .args(["exec", "--json", counter.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Before the fix: 20 runs succeeded and the count was 9 to 17, the same
    // count handed out up to 5 times.
    let children: Vec<_> = (0..20).map(|_| exec()).collect();
    let mut counts = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        counts.push(report["output"]["count"].as_u64().unwrap());
    }
    counts.sort_unstable();
    assert_eq!(counts, (1..=20).collect::<Vec<u64>>(), "each count handed out once");
    let out = exec().wait_with_output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["output"]["count"], 21);
}

#[test]
fn a_triggered_run_is_on_record_before_its_id_is_returned_and_a_kill_9_cannot_lose_it() {
    use crate::daemon::{stderr, toml_path};
    use wfrun_runtime::outcome::{ErrorCode, RunStatus};
    let hostile = crate::guests::guest("hostile");
    let hello = crate::guests::guest("hello");
    // One run slot, held by a guest that loops: the second trigger's run
    // waits for it, and so has not loaded anything yet.
    let config = format!(
        "[daemon]\nmax_concurrent_runs = 1\n\
         [jobs.spin]\nbundle = {}\ninput = '{{\"mode\": \"loop\"}}'\nfuel = 1000000000000000\ntimeout = \"5m\"\n\
         [jobs.hello]\nbundle = {}\n",
        toml_path(&hostile),
        toml_path(&hello)
    );
    let mut daemon = DaemonProcess::start(&config);
    let spin = daemon.wfrun(&["trigger", "spin"]);
    assert_eq!(spin.status.code(), Some(0), "{}", stderr(&spin));
    let spinning = String::from_utf8_lossy(&spin.stdout).trim().to_owned();
    assert!(wait_for(Duration::from_secs(10), || daemon
        .run(&spinning)
        .is_some_and(|r| r.status == RunStatus::Running)));

    let queued = daemon.wfrun(&["trigger", "hello"]);
    assert_eq!(queued.status.code(), Some(0), "{}", stderr(&queued));
    let waiting = String::from_utf8_lossy(&queued.stdout).trim().to_owned();
    let record = daemon.run(&waiting).expect("the id trigger printed names a run on record");
    assert_eq!((record.status, record.job.as_deref()), (RunStatus::Pending, Some("hello")));

    daemon.signal("-KILL");
    daemon.wait(Duration::from_secs(5));
    let daemon = DaemonProcess::start_in(daemon.into_dir(), &config);
    for id in [&spinning, &waiting] {
        let run = daemon.run(id).unwrap();
        assert_eq!((run.status, run.error_code), (RunStatus::Interrupted, Some(ErrorCode::Interrupted)), "{id}");
    }
}

#[test]
fn a_retry_waiting_out_its_backoff_is_on_record_and_ends_cancelled_when_the_daemon_stops() {
    use crate::daemon::toml_path;
    use wfrun_runtime::outcome::RunStatus;
    let hostile = crate::guests::guest("hostile");
    let mut daemon = DaemonProcess::start(&format!(
        "[retry]\ninitial_backoff = \"1m\"\nmax_attempts = 3\n\
         [jobs.fail]\nbundle = {}\ninput = '{{\"mode\": \"fail\"}}'\n",
        toml_path(&hostile)
    ));
    let first = String::from_utf8_lossy(&daemon.wfrun(&["trigger", "fail"]).stdout).trim().to_owned();
    assert!(wait_for(Duration::from_secs(30), || daemon.runs().len() == 2), "{:?}", daemon.runs());
    let runs = daemon.runs();
    let retry = runs.iter().find(|r| r.run_id != first).unwrap();
    assert_eq!(daemon.run(&first).unwrap().status, RunStatus::Failed);
    assert_eq!(retry.status, RunStatus::Pending, "the retry is on record while it waits");

    daemon.signal("-TERM");
    assert_eq!(daemon.wait(Duration::from_secs(15)), Some(0), "log:\n{}", daemon.log());
    let ended = daemon.run(&retry.run_id).unwrap();
    assert_eq!(ended.status, RunStatus::Cancelled);
    assert!(ended.finished_at.is_some());
}

/// The soft limit on open files of process `pid`.
fn open_file_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn the_daemon_raises_its_open_file_limit_to_what_the_hard_limit_allows() {
    let daemon = DaemonProcess::spawn_under(
        &["prlimit", "--nofile=256:4096", "--"],
        tempfile::tempdir().unwrap(),
        "[daemon]\nmax_concurrent_runs = 2\n",
        &[],
    );
    let socket = daemon.state().join("wfrun.sock");
    assert!(wait_for(Duration::from_secs(30), || std::os::unix::net::UnixStream::connect(&socket).is_ok()));
    assert_eq!(open_file_limit(daemon.pid()), 4096);
}

/// Sends `GET path` on `stream` (kept open) and reads one answer: its status.
fn get_kept_alive(stream: &mut TcpStream, path: &str, token: &str) -> Option<u16> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|n| n.trim().parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn idle_connections_cannot_take_the_descriptors_fleet_serve_needs_to_answer() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("repo/metadata")).unwrap();
    std::fs::write(dir.path().join("repo/metadata/root.json"), "{}").unwrap();
    std::fs::write(dir.path().join("tokens"), "dev-1=secret-token-0123456789\n").unwrap();
    let port = free_port();
    let mut child = std::process::Command::new("prlimit")
        .args(["--nofile=128:128", "--", env!("CARGO_BIN_EXE_wfrun"), "--state-dir"])
        .arg(dir.path().join("fleet"))
        .args(["fleet", "serve", "--listen", &format!("127.0.0.1:{port}"), "--tokens"])
        .arg(dir.path().join("tokens"))
        .arg("--repo")
        .arg(dir.path().join("repo"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for(Duration::from_secs(30), || TcpStream::connect(("127.0.0.1", port)).is_ok()));
    let mut kept = TcpStream::connect(("127.0.0.1", port)).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(get_kept_alive(&mut kept, "/metadata/root.json", "secret-token-0123456789"), Some(200));

    // Before the cap, these took every descriptor: the server could no
    // longer open the file it was asked for.
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let idle: Vec<TcpStream> =
        (0..600).filter_map(|_| TcpStream::connect_timeout(&address, Duration::from_millis(200)).ok()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let during = get_kept_alive(&mut kept, "/metadata/root.json", "secret-token-0123456789");
    drop(idle);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(during, Some(200), "answered during the flood");
}

#[test]
fn a_reader_that_goes_away_ends_wfrun_quietly_not_with_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(crate::guests::guest("hello"), dir.path().join("hello.wasm")).unwrap();
    let mut text = String::from("name = \"wide\"\nversion = \"1\"\n");
    for i in 0..2_000 {
        text += &format!("[nodes.n{i:04}]\ncomponent = \"hello.wasm\"\n");
    }
    std::fs::write(dir.path().join("workflow.toml"), &text).unwrap();
    let bundle = dir.path().join("wide.wasm");
    let pack =
        crate::exec::wfrun().arg("pack").arg(dir.path().join("workflow.toml")).arg("-o").arg(&bundle).output().unwrap();
    assert_eq!(pack.status.code(), Some(0));
    for json in [false, true] {
        let mut inspect = crate::exec::wfrun();
        inspect.arg("inspect").arg(&bundle);
        if json {
            inspect.arg("--json");
        }
        // More output than a pipe holds, and a reader that reads none of it.
        let mut child =
            inspect.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // A panic exits 101.
        assert_eq!(out.status.code(), Some(0), "json: {json}; {stderr}");
    }
}
