//! `wfrun daemon` as a real process on a temporary state directory, driven
//! through its CLI clients, its socket and its webhook listener.

use crate::guests::guest;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use wfrun_runtime::outcome::{ErrorCode, RunStatus};
use wfrun_runtime::store::Store;

/// A daemon process with its own state directory, killed when dropped.
pub struct DaemonProcess {
    child: Child,
    dir: Option<tempfile::TempDir>,
}

impl DaemonProcess {
    /// Starts `wfrun daemon` with `config` (TOML) and waits for its socket.
    pub fn start(config: &str) -> DaemonProcess {
        let dir = tempfile::tempdir().unwrap();
        DaemonProcess::start_in(dir, config)
    }

    pub fn start_in(dir: tempfile::TempDir, config: &str) -> DaemonProcess {
        let daemon = DaemonProcess::spawn(dir, config, &[]);
        // A stale socket file may be left by a killed daemon: wait until one answers.
        let socket = daemon.state().join("wfrun.sock");
        let answers = || std::os::unix::net::UnixStream::connect(&socket).is_ok();
        assert!(wait_for(Duration::from_secs(30), answers), "no control socket; log:\n{}", daemon.log());
        daemon
    }

    /// Starts `wfrun daemon` with extra environment variables, without
    /// waiting for it to answer.
    pub fn spawn(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> DaemonProcess {
        DaemonProcess::spawn_under(&[], dir, config, env)
    }

    /// [`spawn`](Self::spawn) through `wrapper` (e.g. `prlimit --nofile=…`),
    /// which must exec the daemon in its place.
    pub fn spawn_under(wrapper: &[&str], dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> DaemonProcess {
        let config_path = dir.path().join("wfrun.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join(format!("daemon-{}.log", now_ms()))).unwrap();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(env!("CARGO_BIN_EXE_wfrun"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_wfrun")),
        };
        let child = command
            .args(["daemon", "--config"])
            .arg(&config_path)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env_remove("WFRUN_DIR")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        DaemonProcess { child, dir: Some(dir) }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn root(&self) -> &Path {
        self.dir.as_ref().expect("the directory is kept until the daemon is dropped").path()
    }

    pub fn state(&self) -> PathBuf {
        self.root().join("state")
    }

    /// Stops the process (if it still runs) and keeps its directory.
    pub fn into_dir(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.dir.take().unwrap()
    }

    pub fn log(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(self.root()).unwrap().flatten() {
            if entry.file_name().to_string_lossy().starts_with("daemon-") {
                text += &std::fs::read_to_string(entry.path()).unwrap_or_default();
            }
        }
        text
    }

    /// Runs a client command against this daemon.
    pub fn wfrun(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_wfrun"))
            .arg("--state-dir")
            .arg(self.state())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn runs(&self) -> Vec<wfrun_runtime::store::RunRecord> {
        Store::open_existing(&self.state()).unwrap().map(|s| s.list_runs(None, 1000).unwrap()).unwrap_or_default()
    }

    pub fn run(&self, id: &str) -> Option<wfrun_runtime::store::RunRecord> {
        Store::open_existing(&self.state()).unwrap().and_then(|s| s.run(id).unwrap())
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; its status code.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        self.wait_status(timeout).and_then(|status| status.code())
    }

    /// Waits for the process to exit; its status (`None`: it did not).
    pub fn wait_status(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
}

pub fn wait_for(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    ready()
}

pub fn toml_path(path: &Path) -> String {
    format!("{:?}", path.to_str().unwrap())
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn an_interval_job_fires_again_and_again() {
    let hello = guest("hello");
    let daemon = DaemonProcess::start(&format!(
        "[jobs.tick]\nbundle = {}\ninput = '{{\"name\": \"tick\"}}'\nevery = \"300ms\"\n",
        toml_path(&hello)
    ));
    let fired = wait_for(Duration::from_secs(30), || {
        daemon.runs().iter().filter(|r| r.status == RunStatus::Succeeded).count() >= 3
    });
    assert!(fired, "fewer than 3 runs; log:\n{}", daemon.log());
    let run = &daemon.runs()[0];
    assert_eq!(run.output.as_deref(), Some(r#"{"greeting":"Hello, tick!"}"#));

    let status = daemon.wfrun(&["status", "--json"]);
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let job = &status["result"]["jobs"][0];
    assert_eq!((job["name"].as_str(), job["trigger"].as_str()), (Some("tick"), Some("every 300ms")));
    assert_eq!(job["source"], "config");
}

#[test]
fn jobs_are_added_scheduled_by_cron_paused_and_removed_from_the_cli() {
    let hello = guest("hello");
    let daemon = DaemonProcess::start("");
    let add = daemon.wfrun(&["jobs", "add", "nightly", "--bundle", hello.to_str().unwrap(), "--cron", "0 3 * * *"]);
    assert_eq!(add.status.code(), Some(0), "{}", stderr(&add));
    let list = daemon.wfrun(&["jobs", "list", "--json"]);
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    let job = &list["result"][0];
    assert_eq!(job["trigger"], "cron \"0 3 * * *\" (UTC)");
    let next = job["next_due"].as_str().unwrap_or_default().to_owned();
    assert!(next.ends_with("T03:00:00Z"), "next due {next:?}; log:\n{}", daemon.log());

    let bad = daemon.wfrun(&["jobs", "add", "bad", "--bundle", hello.to_str().unwrap(), "--cron", "* * *", "--json"]);
    assert_eq!(bad.status.code(), Some(6));
    let bad: Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!((&bad["error"]["code"], &bad["error"]["detail"]), (&"invalid".into(), &"bad_cron".into()), "{bad}");

    assert_eq!(daemon.wfrun(&["jobs", "pause", "nightly"]).status.code(), Some(0));
    let trigger = daemon.wfrun(&["trigger", "nightly"]);
    assert_eq!(trigger.status.code(), Some(6));
    assert!(stderr(&trigger).contains("paused"), "{}", stderr(&trigger));
    assert_eq!(daemon.wfrun(&["jobs", "resume", "nightly"]).status.code(), Some(0));
    let trigger = daemon.wfrun(&["trigger", "nightly", "--input", r#"{"name":"by hand"}"#]);
    assert_eq!(trigger.status.code(), Some(0), "{}", stderr(&trigger));
    let run_id = stdout(&trigger).trim().to_owned();
    assert!(wait_for(Duration::from_secs(30), || daemon
        .run(&run_id)
        .is_some_and(|r| r.status == RunStatus::Succeeded)));
    assert_eq!(daemon.run(&run_id).unwrap().output.as_deref(), Some(r#"{"greeting":"Hello, by hand!"}"#));

    assert_eq!(daemon.wfrun(&["jobs", "remove", "nightly"]).status.code(), Some(0));
    let missing = daemon.wfrun(&["trigger", "nightly"]);
    assert!(stderr(&missing).contains("not_found"), "{}", stderr(&missing));
}

#[test]
fn the_control_socket_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let daemon = DaemonProcess::start("");
    let mode = std::fs::metadata(daemon.state().join("wfrun.sock")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let dir_mode = std::fs::metadata(daemon.state()).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o077, 0, "state directory mode {dir_mode:o}");
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn post(port: u16, path: &str, headers: &[(&str, String)], body: &str) -> (u16, Value) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut request =
        format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (name, value) in headers {
        request += &format!("{name}: {value}\r\n");
    }
    request += "\r\n";
    request += body;
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A POST whose Host header is `host`.
fn post_raw_host(port: u16, path: &str, host: &str, body: &str) -> (u16, Value) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn a_webhook_runs_its_job_and_refuses_forged_replayed_stale_and_cross_site_requests() {
    use hmac::{Hmac, Mac};
    let hello = guest("hello");
    let port = free_port();
    let secret = "00112233445566778899aabbccddeeff";
    let daemon = DaemonProcess::start(&format!(
        "[webhook]\nlisten = \"127.0.0.1:{port}\"\nmax_body = \"1KiB\"\n\
         [jobs.hook]\nbundle = {b}\nwebhook = true\n\
         [jobs.signed]\nbundle = {b}\nwebhook = true\nwebhook_secret = \"{secret}\"\n",
        b = toml_path(&hello)
    ));
    assert!(wait_for(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()));

    let (status, answer) = post(port, "/hooks/hook", &[], r#"{"name":"webhook"}"#);
    assert_eq!(status, 202, "{answer}");
    let run_id = answer["run_id"].as_str().unwrap().to_owned();
    assert!(wait_for(Duration::from_secs(30), || daemon
        .run(&run_id)
        .is_some_and(|r| r.status == RunStatus::Succeeded)));
    assert_eq!(daemon.run(&run_id).unwrap().output.as_deref(), Some(r#"{"greeting":"Hello, webhook!"}"#));

    let body = r#"{"name":"signed"}"#;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let signed = |timestamp: u64, delivery: &str, body: &str| {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&hex::decode(secret).unwrap()).unwrap();
        mac.update(format!("v1:{timestamp}:{delivery}:{body}").as_bytes());
        vec![
            ("X-Wfrun-Timestamp", timestamp.to_string()),
            ("X-Wfrun-Delivery", delivery.to_owned()),
            ("X-Wfrun-Signature", format!("sha256={}", hex::encode(mac.finalize().into_bytes()))),
        ]
    };
    let code = |(status, answer): (u16, Value)| (status, answer["error"]["code"].as_str().unwrap_or("").to_owned());
    assert_eq!(code(post(port, "/hooks/signed", &[], body)), (401, "stale_signature".into()));
    let mut forged = signed(now, "d-1", body);
    forged[2].1 = format!("sha256={}", "0".repeat(64));
    assert_eq!(code(post(port, "/hooks/signed", &forged, body)), (401, "bad_signature".into()));
    // The body alone signed (the old scheme) is refused: it could be replayed.
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&hex::decode(secret).unwrap()).unwrap();
    mac.update(body.as_bytes());
    let mut body_only = signed(now, "d-1", body);
    body_only[2].1 = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(code(post(port, "/hooks/signed", &body_only, body)), (401, "bad_signature".into()));
    let (status, answer) = post(port, "/hooks/signed", &signed(now, "d-1", body), body);
    assert_eq!(status, 202, "{answer}");
    // (The job takes one run at a time: let this one end.)
    let run_id = answer["run_id"].as_str().unwrap().to_owned();
    assert!(wait_for(Duration::from_secs(30), || daemon.run(&run_id).is_some_and(|r| r.status.is_finished())));
    // A captured request, sent again: refused. Signed long ago: refused.
    assert_eq!(code(post(port, "/hooks/signed", &signed(now, "d-1", body), body)), (409, "replayed".into()));
    assert_eq!(
        code(post(port, "/hooks/signed", &signed(now - 600, "d-2", body), body)),
        (401, "stale_signature".into())
    );
    assert_eq!(post(port, "/hooks/signed", &signed(now, "d-2", body), body).0, 202);

    // A job without a secret takes no request a web page could make a
    // browser send: one with an Origin, or a rebound Host.
    let origin = [("Origin", "https://evil.example".to_owned())];
    assert_eq!(code(post(port, "/hooks/hook", &origin, "{}")), (403, "cross_origin".into()));
    let rebound = [("Host", format!("evil.example:{port}"))];
    assert_eq!(code(post_raw_host(port, "/hooks/hook", &rebound[0].1, "{}")), (403, "bad_host".into()));

    // The secret never leaves the daemon.
    let list = stdout(&daemon.wfrun(&["jobs", "list", "--json"]));
    assert!(!list.contains(secret) && list.contains("redacted"), "{list}");

    assert_eq!(post(port, "/hooks/nope", &[], "{}").0, 404);
    assert_eq!(post(port, "/hooks/hook", &[], &"x".repeat(4096)).0, 413);
    assert_eq!(post(port, "/hooks/hook", &[], "{not json").0, 400);
}

#[test]
fn a_looping_guest_is_cancelled_within_a_second() {
    let hostile = guest("hostile");
    let daemon = DaemonProcess::start(&format!(
        "[jobs.spin]\nbundle = {}\ninput = '{{\"mode\": \"loop\"}}'\nfuel = 1000000000000000\ntimeout = \"5m\"\n",
        toml_path(&hostile)
    ));
    let trigger = daemon.wfrun(&["trigger", "spin"]);
    assert_eq!(trigger.status.code(), Some(0), "{}", stderr(&trigger));
    let run_id = stdout(&trigger).trim().to_owned();
    assert!(wait_for(Duration::from_secs(10), || daemon.run(&run_id).is_some_and(|r| r.status == RunStatus::Running)));
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    let cancel = daemon.wfrun(&["cancel", &run_id]);
    assert_eq!(cancel.status.code(), Some(0), "{}", stderr(&cancel));
    assert!(wait_for(Duration::from_secs(5), || daemon.run(&run_id).is_some_and(|r| r.status == RunStatus::Cancelled)));
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(1), "cancelling took {took:?}");
    // A cancelled run is not retried.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(daemon.runs().len(), 1);
}

#[test]
fn sigterm_lets_running_runs_finish_then_exits_zero() {
    let hostile = guest("hostile");
    let mut daemon = DaemonProcess::start(&format!(
        "[jobs.nap]\nbundle = {}\ninput = '{{\"mode\": \"nap\", \"n\": 700}}'\n",
        toml_path(&hostile)
    ));
    let run_id = stdout(&daemon.wfrun(&["trigger", "nap"])).trim().to_owned();
    assert!(wait_for(Duration::from_secs(10), || daemon.run(&run_id).is_some_and(|r| r.status == RunStatus::Running)));
    daemon.signal("-TERM");
    assert_eq!(daemon.wait(Duration::from_secs(15)), Some(0), "log:\n{}", daemon.log());
    assert_eq!(daemon.run(&run_id).unwrap().status, RunStatus::Succeeded);
    assert!(!daemon.state().join("wfrun.sock").exists());
}

#[test]
fn sigterm_cancels_what_outlives_the_grace_period() {
    let hostile = guest("hostile");
    let mut daemon = DaemonProcess::start(&format!(
        "[daemon]\ngrace_period = \"300ms\"\n\
         [jobs.spin]\nbundle = {}\ninput = '{{\"mode\": \"loop\"}}'\nfuel = 1000000000000000\ntimeout = \"5m\"\n",
        toml_path(&hostile)
    ));
    let run_id = stdout(&daemon.wfrun(&["trigger", "spin"])).trim().to_owned();
    assert!(wait_for(Duration::from_secs(10), || daemon.run(&run_id).is_some_and(|r| r.status == RunStatus::Running)));
    daemon.signal("-TERM");
    assert_eq!(daemon.wait(Duration::from_secs(10)), Some(0), "log:\n{}", daemon.log());
    assert_eq!(daemon.run(&run_id).unwrap().status, RunStatus::Cancelled);
}

#[test]
fn kill_9_leaves_nothing_running_after_a_restart() {
    let hostile = guest("hostile");
    let hello = guest("hello");
    let config = format!(
        "[jobs.hello]\nbundle = {}\n[jobs.spin]\nbundle = {}\ninput = '{{\"mode\": \"loop\"}}'\nfuel = 1000000000000000\ntimeout = \"5m\"\n",
        toml_path(&hello),
        toml_path(&hostile)
    );
    let mut daemon = DaemonProcess::start(&config);
    let done = stdout(&daemon.wfrun(&["trigger", "hello"])).trim().to_owned();
    assert!(wait_for(Duration::from_secs(30), || daemon.run(&done).is_some_and(|r| r.status == RunStatus::Succeeded)));
    let spinning = stdout(&daemon.wfrun(&["trigger", "spin"])).trim().to_owned();
    assert!(wait_for(Duration::from_secs(10), || daemon
        .run(&spinning)
        .is_some_and(|r| r.status == RunStatus::Running)));
    daemon.signal("-KILL");
    daemon.wait(Duration::from_secs(5));
    assert_eq!(daemon.run(&spinning).unwrap().status, RunStatus::Running, "nothing has recovered it yet");

    let daemon = DaemonProcess::start_in(daemon.into_dir(), &config);
    let recovered = daemon.run(&spinning).unwrap();
    assert_eq!(
        (recovered.status, recovered.error_code),
        (RunStatus::Interrupted, Some(ErrorCode::Interrupted)),
        "log:\n{}",
        daemon.log()
    );
    assert_eq!(recovered.transitions.last().map(|t| t.0), Some(RunStatus::Interrupted));
    let kept = daemon.run(&done).unwrap();
    assert_eq!(kept.output.as_deref(), Some(r#"{"greeting":"Hello, world!"}"#));
    let store = Store::open_existing(&daemon.state()).unwrap().unwrap();
    assert!(store.list_runs(Some(RunStatus::Running), 10).unwrap().is_empty());
    let db = rusqlite::Connection::open(daemon.state().join("wfrun.db")).unwrap();
    let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    // The jobs survived too.
    let list: Value = serde_json::from_slice(&daemon.wfrun(&["jobs", "list", "--json"]).stdout).unwrap();
    assert_eq!(list["result"].as_array().map(Vec::len), Some(2));
}

#[test]
fn clients_say_when_no_daemon_is_running() {
    let dir = tempfile::tempdir().unwrap();
    let output =
        Command::new(env!("CARGO_BIN_EXE_wfrun")).arg("--state-dir").arg(dir.path()).arg("status").output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("no wfrun daemon is running"), "{}", stderr(&output));
}

#[test]
fn a_second_daemon_on_the_same_state_directory_is_refused() {
    let daemon = DaemonProcess::start("");
    let output = Command::new(env!("CARGO_BIN_EXE_wfrun"))
        .arg("--state-dir")
        .arg(daemon.state())
        .arg("daemon")
        .env_remove("WFRUN_DIR")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("another wfrun daemon is running"), "{}", stderr(&output));
}

#[test]
fn the_http_control_api_needs_the_bearer_token() {
    use std::os::unix::fs::PermissionsExt;
    let port = free_port();
    let daemon = DaemonProcess::start(&format!("[control_http]\nlisten = \"127.0.0.1:{port}\"\n"));
    assert!(wait_for(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()));
    let token_file = daemon.state().join("control.token");
    assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);
    let token = std::fs::read_to_string(&token_file).unwrap();
    let request = r#"{"id": 7, "method": "status"}"#;

    assert_eq!(post(port, "/v1/rpc", &[], request).0, 401);
    let wrong = ("Authorization", format!("Bearer {}", "f".repeat(64)));
    assert_eq!(post(port, "/v1/rpc", &[wrong], request).0, 401);
    let bearer = ("Authorization", format!("Bearer {}", token.trim()));
    let (status, answer) = post(port, "/v1/rpc", std::slice::from_ref(&bearer), request);
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["id"].as_u64(), answer["ok"].as_bool()), (Some(7), Some(true)));
    assert_eq!(answer["result"]["pid"].as_u64(), Some(u64::from(daemon.child.id())));
    // The same dispatcher as the socket: the same refusals.
    let (status, answer) = post(port, "/v1/rpc", &[bearer], r#"{"method": "trigger", "params": {"name": "nope"}}"#);
    assert_eq!(status, 422);
    assert_eq!(answer["error"]["code"], "not_found");
}

#[test]
fn trusted_keys_in_the_config_refuse_unsigned_bundles() {
    let keys = tempfile::tempdir().unwrap();
    let keygen = Command::new(env!("CARGO_BIN_EXE_wfrun")).args(["keygen", "--out"]).arg(keys.path()).output().unwrap();
    assert!(keygen.status.success(), "{}", stderr(&keygen));
    let signed = keys.path().join("hello-signed.wasm");
    std::fs::copy(guest("hello"), &signed).unwrap();
    let sign = Command::new(env!("CARGO_BIN_EXE_wfrun"))
        .arg("sign")
        .arg(&signed)
        .arg("--key")
        .arg(keys.path().join("wfrun.key"))
        .output()
        .unwrap();
    assert!(sign.status.success(), "{}", stderr(&sign));
    let daemon = DaemonProcess::start(&format!(
        "[retry]\nmax_attempts = 1\n[trust]\ntrusted_keys = [{}]\nrequire_signed = true\n\
         [jobs.unsigned]\nbundle = {}\n[jobs.signed]\nbundle = {}\n",
        toml_path(&keys.path().join("wfrun.pub")),
        toml_path(&guest("hello")),
        toml_path(&signed)
    ));
    let unsigned = stdout(&daemon.wfrun(&["trigger", "unsigned"])).trim().to_owned();
    let signed = stdout(&daemon.wfrun(&["trigger", "signed"])).trim().to_owned();
    let finished = |id: &str| daemon.run(id).is_some_and(|r| r.finished_at.is_some());
    assert!(wait_for(Duration::from_secs(30), || finished(&unsigned) && finished(&signed)), "{}", daemon.log());
    let refused = daemon.run(&unsigned).unwrap();
    assert_eq!(refused.error_code, Some(ErrorCode::InvalidBundle));
    assert_eq!(refused.error_detail.as_deref(), Some("signature_missing"), "{refused:?}");
    assert_eq!(daemon.run(&signed).unwrap().status, RunStatus::Succeeded);
}

#[test]
fn a_job_that_keeps_failing_is_retried_with_backoff_then_paused() {
    let hostile = guest("hostile");
    let daemon = DaemonProcess::start(&format!(
        "[retry]\ninitial_backoff = \"100ms\"\nmax_attempts = 3\n\
         [jobs.flaky]\nbundle = {}\ninput = '{{\"mode\": \"fail\"}}'\n",
        toml_path(&hostile)
    ));
    let first = stdout(&daemon.wfrun(&["trigger", "flaky"])).trim().to_owned();
    let paused = || {
        let list: Value = serde_json::from_slice(&daemon.wfrun(&["jobs", "list", "--json"]).stdout).unwrap();
        list["result"][0]["paused"] == true
    };
    assert!(wait_for(Duration::from_secs(30), paused), "log:\n{}", daemon.log());
    let runs = daemon.runs();
    assert_eq!(runs.len(), 3, "one trigger, three attempts");
    assert!(runs.iter().all(|r| r.status == RunStatus::Failed && r.error_code == Some(ErrorCode::NodeError)));
    assert!(runs.iter().any(|r| r.run_id == first));
    // Each attempt started (went `running`) after the one before had
    // ended, plus the backoff. (A retry is recorded `pending` as its
    // backoff begins.)
    let started = |r: &wfrun_runtime::store::RunRecord| {
        r.transitions.iter().find(|t| t.0 == RunStatus::Running).map(|t| t.1.clone()).unwrap()
    };
    let mut times: Vec<(String, String)> = runs.iter().map(|r| (started(r), r.finished_at.clone().unwrap())).collect();
    times.sort();
    for pair in times.windows(2) {
        let ended = humantime::parse_rfc3339(&pair[0].1).unwrap();
        let next = humantime::parse_rfc3339(&pair[1].0).unwrap();
        assert!(next.duration_since(ended).unwrap() >= Duration::from_millis(90), "{pair:?}");
    }
    // A paused job is not triggered; resuming clears the failures.
    assert_eq!(daemon.wfrun(&["trigger", "flaky"]).status.code(), Some(6));
    assert_eq!(daemon.wfrun(&["jobs", "resume", "flaky"]).status.code(), Some(0));
    let list: Value = serde_json::from_slice(&daemon.wfrun(&["jobs", "list", "--json"]).stdout).unwrap();
    assert_eq!(list["result"][0]["consecutive_failures"], 0);
}

#[test]
fn recovery_leaves_live_runs_alone_and_distrusts_process_ids_from_another_boot_or_reused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut live = Command::new("sleep").arg("30").spawn().unwrap();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap().trim().to_owned();
    let db = rusqlite::Connection::open(dir.path().join("wfrun.db")).unwrap();
    // The live process's start time, as the store records its own.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", live.id())).unwrap();
    let started: u64 = stat.rsplit_once(')').unwrap().1.split_whitespace().nth(19).unwrap().parse().unwrap();
    let (owned, reused) = (format!("{boot}/{started}"), format!("{boot}/{}", started + 1));
    for (id, pid, owner_boot) in [
        ("live-this-boot", live.id(), boot.as_str()),
        ("live-with-start-time", live.id(), owned.as_str()),
        // The same pid, now another process: it started at another time.
        ("pid-reused", live.id(), reused.as_str()),
        ("same-pid-other-boot", live.id(), "00000000-0000-0000-0000-000000000000"),
        ("dead", 0x7fff_fff0, boot.as_str()),
    ] {
        db.execute(
            "INSERT INTO runs (id, workflow, version, kind, bundle_path, bundle_digest, status, created_at, owner_pid, owner_boot)
             VALUES (?1, 'w', '1', 'node', 'b', 'd', 'running', '2026-01-01T00:00:00Z', ?2, ?3)",
            rusqlite::params![id, pid, owner_boot],
        )
        .unwrap();
    }
    let mut recovered = store.recover_interrupted().unwrap();
    recovered.sort();
    assert_eq!(recovered, ["dead", "pid-reused", "same-pid-other-boot"]);
    assert_eq!(store.run("live-this-boot").unwrap().unwrap().status, RunStatus::Running);
    assert_eq!(store.run("live-with-start-time").unwrap().unwrap().status, RunStatus::Running);
    let dead = store.run("dead").unwrap().unwrap();
    assert_eq!((dead.status, dead.error_code), (RunStatus::Interrupted, Some(ErrorCode::Interrupted)));
    let _ = live.kill();
    let _ = live.wait();
}

#[test]
fn a_prepared_program_is_reused_until_the_bundle_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("job.wasm");
    std::fs::copy(guest("hello"), &bundle).unwrap();
    let daemon = DaemonProcess::start(&format!("[jobs.j]\nbundle = {}\n", toml_path(&bundle)));
    let status = |daemon: &DaemonProcess| -> Value {
        serde_json::from_slice::<Value>(&daemon.wfrun(&["status", "--json"]).stdout).unwrap()["result"].clone()
    };
    let finished = |id: &str| daemon.run(id).is_some_and(|r| r.status.is_finished());
    for _ in 0..2 {
        let run = stdout(&daemon.wfrun(&["trigger", "j"])).trim().to_owned();
        assert!(wait_for(Duration::from_secs(30), || finished(&run)), "{}", daemon.log());
        assert_eq!(daemon.run(&run).unwrap().output.as_deref(), Some(r#"{"greeting":"Hello, world!"}"#));
    }
    let programs = &status(&daemon)["programs"];
    assert_eq!((programs["loads"].as_u64(), programs["hits"].as_u64()), (Some(1), Some(1)), "{programs}");

    // A new file at the same path is picked up at the next trigger.
    std::fs::copy(guest("counter"), &bundle).unwrap();
    let run = stdout(&daemon.wfrun(&["trigger", "j"])).trim().to_owned();
    assert!(wait_for(Duration::from_secs(30), || finished(&run)), "{}", daemon.log());
    assert_eq!(daemon.run(&run).unwrap().output.as_deref(), Some(r#"{"count":1}"#));
    assert_eq!(status(&daemon)["programs"]["loads"].as_u64(), Some(2));
}

/// A job slow to instantiate (a start function that counts to two
/// million) has its runs served by instances made ahead of them; with
/// `spare_instances = 0`, by none. `wfrun status` counts them.
#[test]
fn a_job_slow_to_instantiate_runs_on_spare_instances_unless_they_are_off() {
    for (daemon_table, spares_on) in [("", true), ("[daemon]\nspare_instances = 0\n", false)] {
        let dir = tempfile::tempdir().unwrap();
        let bundle = crate::guests::wat_file(dir.path(), "slow-start-job");
        let daemon =
            DaemonProcess::start_in(dir, &format!("{daemon_table}[jobs.j]\nbundle = {}\n", toml_path(&bundle)));
        let spares_taken = || -> u64 {
            let status: Value = serde_json::from_slice(&daemon.wfrun(&["status", "--json"]).stdout).unwrap();
            status["result"]["programs"]["spares_taken"].as_u64().unwrap()
        };
        // The spare is made between triggers, by a thread at the lowest
        // priority: on a busy machine it may take a few.
        for _ in 0..if spares_on { 25 } else { 4 } {
            let run = stdout(&daemon.wfrun(&["trigger", "j"])).trim().to_owned();
            let done = || daemon.run(&run).is_some_and(|r| r.status.is_finished());
            assert!(wait_for(Duration::from_secs(30), done), "{}", daemon.log());
            assert_eq!(daemon.run(&run).unwrap().status, RunStatus::Succeeded, "{}", daemon.log());
            if spares_on && spares_taken() > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if spares_on {
            assert!(spares_taken() > 0, "no run was served by a spare; log:\n{}", daemon.log());
        } else {
            assert_eq!(spares_taken(), 0);
        }
    }
}

#[test]
fn the_trust_mode_is_shown_and_unsigned_bundles_are_warned_about() {
    let open = DaemonProcess::start("");
    let status: Value = serde_json::from_slice(&open.wfrun(&["status", "--json"]).stdout).unwrap();
    assert_eq!(status["result"]["trust"]["mode"], "unsigned_allowed");
    assert!(open.log().contains("unsigned_allowed"), "no warning at start:\n{}", open.log());

    // Trusted keys without require_signed: signed only, all the same.
    let keys = tempfile::tempdir().unwrap();
    let keygen = Command::new(env!("CARGO_BIN_EXE_wfrun")).args(["keygen", "--out"]).arg(keys.path()).output().unwrap();
    assert!(keygen.status.success());
    let daemon = DaemonProcess::start(&format!(
        "[retry]\nmax_attempts = 1\n[trust]\ntrusted_keys = [{}]\n[jobs.unsigned]\nbundle = {}\n",
        toml_path(&keys.path().join("wfrun.pub")),
        toml_path(&guest("hello"))
    ));
    let status: Value = serde_json::from_slice(&daemon.wfrun(&["status", "--json"]).stdout).unwrap();
    assert_eq!(status["result"]["trust"]["mode"], "signed_only");
    assert!(!daemon.log().contains("unsigned_allowed"), "{}", daemon.log());
    let run = stdout(&daemon.wfrun(&["trigger", "unsigned"])).trim().to_owned();
    assert!(wait_for(Duration::from_secs(30), || daemon.run(&run).is_some_and(|r| r.status.is_finished())));
    let refused = daemon.run(&run).unwrap();
    assert_eq!(refused.error_code, Some(ErrorCode::InvalidBundle));
    assert_eq!(refused.error_detail.as_deref(), Some("signature_missing"));
    assert_eq!(refused.job.as_deref(), Some("unsigned"));
}

#[test]
fn require_signed_without_trusted_keys_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wfrun.toml");
    std::fs::write(&config, "[trust]\nrequire_signed = true\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wfrun"))
        .args(["daemon", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!dir.path().join("state").join("wfrun.sock").exists(), "the daemon must not have started");
}

/// `wfrun sync status --json`'s result.
pub fn sync_status(daemon: &DaemonProcess) -> Value {
    serde_json::from_slice::<Value>(&daemon.wfrun(&["sync", "status", "--json"]).stdout).unwrap()["result"].clone()
}

#[test]
fn a_release_activates_passes_its_trial_a_broken_one_rolls_back_and_jobs_run_on_offline() {
    use crate::releases::{StaticServer, release};
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    release(&["init", repo.to_str().unwrap()]);
    std::fs::copy(guest("hello"), dir.path().join("hello.wasm")).unwrap();
    std::fs::copy(guest("hostile"), dir.path().join("hostile.wasm")).unwrap();
    std::fs::write(
        dir.path().join("v1.toml"),
        "[jobs.tick]\nbundle = \"hello.wasm\"\nevery = \"200ms\"\ninput = '{\"name\": \"fleet\"}'\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("v2.toml"),
        "[jobs.tick]\nbundle = \"hostile.wasm\"\nevery = \"200ms\"\ninput = '{\"mode\": \"fail\"}'\n",
    )
    .unwrap();
    let add = |version: &str, bundle: &str, jobs: &str| {
        let (bundle, jobs) = (dir.path().join(bundle), dir.path().join(jobs));
        let repo = repo.to_str().unwrap();
        release(&[
            "add",
            repo,
            "--channel",
            "stable",
            "--version",
            version,
            bundle.to_str().unwrap(),
            "--jobs",
            jobs.to_str().unwrap(),
        ]);
    };
    add("1.0.0", "hello.wasm", "v1.toml");
    let server = StaticServer::start(&repo);
    let daemon = DaemonProcess::start(&format!(
        "[retry]\nmax_attempts = 1\n[sync]\nurl = \"{}\"\nchannel = \"stable\"\ninterval = \"300ms\"\ntrusted_root = {}\ntrial_runs = 2\n",
        server.url(),
        toml_path(&repo.join("metadata/root.json"))
    ));
    let committed = |daemon: &DaemonProcess| sync_status(daemon)["committed"]["version"].as_str().map(str::to_owned);
    assert!(
        wait_for(Duration::from_secs(60), || committed(&daemon).as_deref() == Some("1.0.0")),
        "v1 never passed its trial: {}\n{}",
        sync_status(&daemon),
        daemon.log()
    );
    let hello_runs = |daemon: &DaemonProcess| {
        daemon.runs().iter().filter(|r| r.output.as_deref() == Some(r#"{"greeting":"Hello, fleet!"}"#)).count()
    };
    assert!(hello_runs(&daemon) >= 2);
    let status = sync_status(&daemon);
    assert!(status["metadata_refreshed"].is_string(), "{status}");
    assert!(status["metadata_expires"]["timestamp"].as_str().is_some_and(|t| t > "2026"), "{status}");
    assert_eq!(status["metadata_expired"], false);

    // v2's job fails: it rolls back by itself, and v1's job runs again.
    add("2.0.0", "hostile.wasm", "v2.toml");
    let rolled_back = || {
        let store = Store::open(&daemon.state()).unwrap();
        store.bad_releases().unwrap().len() == 1 && sync_status(&daemon)["trial"].is_null()
    };
    assert!(
        wait_for(Duration::from_secs(60), rolled_back),
        "v2 was not rolled back: {}\n{}",
        sync_status(&daemon),
        daemon.log()
    );
    assert_eq!(committed(&daemon).as_deref(), Some("1.0.0"));
    let before = hello_runs(&daemon);
    assert!(wait_for(Duration::from_secs(30), || hello_runs(&daemon) > before + 1), "v1's job did not come back");
    // The bad release is not tried again at the next polls.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(sync_status(&daemon)["trial"].is_null());

    // v3 never runs (a manual job), so it stays in trial; `wfrun status`
    // shows it, and `wfrun rollback` brings v1 back by hand.
    std::fs::write(dir.path().join("v3.toml"), "[jobs.tick]\nbundle = \"hello.wasm\"\n").unwrap();
    add("3.0.0", "hello.wasm", "v3.toml");
    let in_trial = || sync_status(&daemon)["trial"]["version"] == "3.0.0";
    assert!(wait_for(Duration::from_secs(60), in_trial), "v3 did not start its trial: {}", sync_status(&daemon));
    let status: Value = serde_json::from_slice(&daemon.wfrun(&["status", "--json"]).stdout).unwrap();
    assert_eq!(
        (&status["result"]["release"]["version"], &status["result"]["release"]["state"]),
        (&"3.0.0".into(), &"trial".into())
    );
    let rollback = daemon.wfrun(&["rollback", "--json"]);
    assert_eq!(rollback.status.code(), Some(0), "{}", stderr(&rollback));
    assert!(sync_status(&daemon)["trial"].is_null());
    let before = hello_runs(&daemon);
    assert!(
        wait_for(Duration::from_secs(30), || hello_runs(&daemon) > before + 1),
        "v1's job did not come back after the rollback"
    );

    // The origin goes away for many polls: they fail as unreachable, the
    // jobs go on, and nothing is refused or rolled back for it.
    server.set_offline(true);
    assert!(wait_for(Duration::from_secs(30), || sync_status(&daemon)["last_error"][0] == "unreachable"));
    let offline = hello_runs(&daemon);
    assert!(wait_for(Duration::from_secs(30), || hello_runs(&daemon) > offline + 10), "jobs stopped while offline");
    assert_eq!(committed(&daemon).as_deref(), Some("1.0.0"));
    let store = Store::open(&daemon.state()).unwrap();
    let events = store.release_events(1000).unwrap();
    assert!(events.iter().all(|e| e.code.as_deref() != Some("unreachable")), "being offline is no refusal");

    // It comes back: the next release activates and passes its trial.
    add("4.0.0", "hello.wasm", "v1.toml");
    server.set_offline(false);
    assert!(
        wait_for(Duration::from_secs(60), || committed(&daemon).as_deref() == Some("4.0.0")),
        "v4 did not activate once the origin was back: {}",
        sync_status(&daemon)
    );
}

/// A release repository whose releases run `hello` as a manual job, which
/// never runs by itself, so a trial never passes on its own; and a function
/// adding a release of a version to channel `stable` (with extra flags).
fn idle_release_repository(dir: &Path) -> (PathBuf, impl Fn(&str, &[&str])) {
    let repo = dir.join("repo");
    crate::releases::release(&["init", repo.to_str().unwrap()]);
    std::fs::copy(guest("hello"), dir.join("hello.wasm")).unwrap();
    std::fs::write(dir.join("jobs.toml"), "[jobs.idle]\nbundle = \"hello.wasm\"\n").unwrap();
    let (bundle, jobs, at) = (dir.join("hello.wasm"), dir.join("jobs.toml"), repo.clone());
    let add = move |version: &str, extra: &[&str]| {
        let (r, b, j) = (at.to_str().unwrap(), bundle.to_str().unwrap(), jobs.to_str().unwrap());
        let mut args = vec!["add", r, "--channel", "stable", "--version", version, b, "--jobs", j];
        args.extend_from_slice(extra);
        crate::releases::release(&args);
    };
    (repo, add)
}

#[test]
fn a_release_whose_trial_keeps_restarting_the_daemon_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, add) = idle_release_repository(dir.path());
    add("1.0.0", &[]);
    let server = crate::releases::StaticServer::start(&repo);
    let config = format!(
        "[sync]\nurl = \"{}\"\nchannel = \"stable\"\ninterval = \"300ms\"\ntrusted_root = {}\n",
        server.url(),
        toml_path(&repo.join("metadata/root.json"))
    );
    let mut daemon = DaemonProcess::start(&config);
    assert!(
        wait_for(Duration::from_secs(60), || sync_status(&daemon)["trial"]["version"] == "1.0.0"),
        "{}",
        daemon.log()
    );
    for _ in 0..3 {
        daemon.signal("-KILL");
        daemon.wait(Duration::from_secs(5));
        daemon = DaemonProcess::start_in(daemon.into_dir(), &config);
    }
    let store = Store::open(&daemon.state()).unwrap();
    assert_eq!(store.bad_releases().unwrap().len(), 1, "rolled back after three restarts: {}", daemon.log());
    let event = store.release_events(10).unwrap().into_iter().find(|e| e.event == "rolled_back").unwrap();
    assert_eq!(event.code.as_deref(), Some("restarts_in_trial"));
    assert!(sync_status(&daemon)["trial"].is_null());
}

#[test]
fn a_release_over_the_devices_grant_or_past_its_trial_deadline_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, add) = idle_release_repository(dir.path());
    std::fs::write(dir.path().join("policy.toml"), "[egress]\nallow = [\"https://api.example.com\"]\n").unwrap();
    let policy = dir.path().join("policy.toml");
    // v1 needs egress this device does not grant: refused before it runs.
    add("1.0.0", &["--policy", policy.to_str().unwrap()]);
    let server = crate::releases::StaticServer::start(&repo);
    let daemon = DaemonProcess::start(&format!(
        "[sync]\nurl = \"{}\"\nchannel = \"stable\"\ninterval = \"200ms\"\ntrusted_root = {}\ntrial_deadline = \"1s\"\n",
        server.url(),
        toml_path(&repo.join("metadata/root.json"))
    ));
    let rolled_back_with = |code: &str| {
        let store = Store::open(&daemon.state()).unwrap();
        store.release_events(100).unwrap().iter().any(|e| e.event == "rolled_back" && e.code.as_deref() == Some(code))
    };
    assert!(wait_for(Duration::from_secs(60), || rolled_back_with("egress_not_granted")), "{}", daemon.log());
    assert!(daemon.runs().is_empty(), "nothing of a refused release ran");

    // v2 asks for nothing, but its manual job never runs: its trial cannot
    // pass, and the deadline rolls it back.
    add("2.0.0", &[]);
    assert!(
        wait_for(Duration::from_secs(60), || rolled_back_with("trial_deadline")),
        "{}\n{}",
        sync_status(&daemon),
        daemon.log()
    );
    assert!(sync_status(&daemon)["trial"].is_null());
}

/// A release repository whose channel `stable` runs `hello` every 200 ms
/// (or `hostile` failing, for a bundle named so), and a function adding a
/// release of a version with `bundle` (and extra flags).
fn ticking_release_repository(dir: &Path) -> (PathBuf, impl Fn(&str, &str, &[&str])) {
    let repo = dir.join("repo");
    crate::releases::release(&["init", repo.to_str().unwrap()]);
    std::fs::copy(guest("hello"), dir.join("hello.wasm")).unwrap();
    std::fs::copy(guest("hostile"), dir.join("hostile.wasm")).unwrap();
    std::fs::write(
        dir.join("hello.toml"),
        "[jobs.tick]\nbundle = \"hello.wasm\"\nevery = \"200ms\"\ninput = '{\"name\": \"fleet\"}'\n\
         [jobs.check]\nbundle = \"hello.wasm\"\ninput = '{\"name\": \"health\"}'\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("hostile.toml"),
        "[jobs.tick]\nbundle = \"hello.wasm\"\nevery = \"200ms\"\ninput = '{\"name\": \"fleet\"}'\n\
         [jobs.check]\nbundle = \"hostile.wasm\"\ninput = '{\"mode\": \"fail\"}'\n",
    )
    .unwrap();
    let (root, at) = (dir.to_path_buf(), repo.clone());
    let add = move |version: &str, bundle: &str, extra: &[&str]| {
        let jobs = root.join(format!("{bundle}.toml"));
        let (hello, hostile) = (root.join("hello.wasm"), root.join("hostile.wasm"));
        let mut args = vec!["add", at.to_str().unwrap(), "--channel", "stable", "--version", version];
        args.push(hello.to_str().unwrap());
        if bundle == "hostile" {
            args.push(hostile.to_str().unwrap());
        }
        args.extend_from_slice(&["--jobs", jobs.to_str().unwrap()]);
        args.extend_from_slice(extra);
        crate::releases::release(&args);
    };
    (repo, add)
}

fn sync_config(server: &crate::releases::StaticServer, repo: &Path, extra: &str) -> String {
    format!(
        "[retry]\nmax_attempts = 1\n[sync]\nurl = \"{}\"\nchannel = \"stable\"\ninterval = \"200ms\"\ntrusted_root = {}\n{extra}",
        server.url(),
        toml_path(&repo.join("metadata/root.json"))
    )
}

fn committed_version(daemon: &DaemonProcess) -> Option<String> {
    sync_status(daemon)["committed"]["version"].as_str().map(str::to_owned)
}

/// Runs of job `name` that succeeded.
fn succeeded(daemon: &DaemonProcess, name: &str) -> usize {
    daemon.runs().iter().filter(|r| r.job.as_deref() == Some(name) && r.status == RunStatus::Succeeded).count()
}

#[test]
fn kill_9_at_each_release_persist_point_resumes_to_a_consistent_release() {
    use std::os::unix::process::ExitStatusExt;
    for point in ["downloading", "staged", "trial", "activated", "committed", "rolled_back"] {
        let dir = tempfile::tempdir().unwrap();
        let (repo, add) = ticking_release_repository(dir.path());
        add("1.0.0", "hello", &["--health", "check"]);
        let server = crate::releases::StaticServer::start(&repo);
        let config = sync_config(&server, &repo, "trial_runs = 2\n");
        let mut daemon = DaemonProcess::spawn(tempfile::tempdir().unwrap(), &config, &[("WFRUN_CRASH_AT", point)]);
        if point == "rolled_back" {
            // v1 passes; v2's `check` fails its trial, and the daemon dies
            // right after recording the rollback.
            let answers = || std::os::unix::net::UnixStream::connect(daemon.state().join("wfrun.sock")).is_ok();
            assert!(wait_for(Duration::from_secs(30), answers), "{}", daemon.log());
            assert!(wait_for(Duration::from_secs(60), || committed_version(&daemon).as_deref() == Some("1.0.0")));
            add("2.0.0", "hostile", &["--health", "check"]);
        }
        let status = daemon.wait_status(Duration::from_secs(60));
        assert_eq!(status.and_then(|s| s.signal()), Some(9), "{point}: not killed there: {}", daemon.log());

        let daemon = DaemonProcess::start_in(daemon.into_dir(), &config);
        let consistent = || {
            committed_version(&daemon).as_deref() == Some("1.0.0")
                && sync_status(&daemon)["trial"].is_null()
                && succeeded(&daemon, "tick") >= 2
        };
        assert!(wait_for(Duration::from_secs(60), consistent), "{point}: {}\n{}", sync_status(&daemon), daemon.log());
        let store = Store::open(&daemon.state()).unwrap();
        let mut events: Vec<(Option<String>, String)> =
            store.release_events(100).unwrap().into_iter().rev().map(|e| (e.digest, e.event)).collect();
        events.retain(|(digest, _)| digest.as_deref() == sync_status(&daemon)["committed"]["digest"].as_str());
        let events: Vec<&str> = events.iter().map(|(_, e)| e.as_str()).collect();
        assert_eq!(events, ["downloading", "staged", "trial", "committed"], "{point}: each step once");
        if point == "rolled_back" {
            assert_eq!(store.bad_releases().unwrap().len(), 1, "v2 stays bad");
        }
        // What is left on disk: the releases in use, nothing half written.
        let staging = daemon.state().join("releases");
        let dirs: Vec<_> = std::fs::read_dir(&staging).unwrap().flatten().map(|e| e.path()).collect();
        // v2 rolled back: its files go at the restart.
        assert_eq!(dirs.len(), 1, "{point}: {dirs:?}");
        for dir in &dirs {
            for file in std::fs::read_dir(dir).unwrap().flatten() {
                assert!(!file.file_name().to_string_lossy().ends_with(".tmp"), "{point}: {:?} left", file.path());
            }
        }
    }
}

#[test]
fn a_last_known_good_with_damaged_files_leaves_the_daemon_idle_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, add) = ticking_release_repository(dir.path());
    add("1.0.0", "hello", &["--health", "check"]);
    let server = crate::releases::StaticServer::start(&repo);
    let config = sync_config(&server, &repo, "trial_runs = 1\n");
    let daemon = DaemonProcess::start(&config);
    assert!(wait_for(Duration::from_secs(60), || committed_version(&daemon).as_deref() == Some("1.0.0")));
    let digest = sync_status(&daemon)["committed"]["digest"].as_str().unwrap().to_owned();
    let staged = daemon.state().join("releases").join(digest.trim_start_matches("sha256:")).join("hello.wasm");
    let mut dir = Some(daemon.into_dir());

    for (damage, code) in [("corrupt", "release_files_corrupt"), ("missing", "release_files_missing")] {
        if damage == "corrupt" {
            let mut bytes = std::fs::read(&staged).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            std::fs::write(&staged, bytes).unwrap();
        } else {
            std::fs::remove_file(&staged).unwrap();
        }
        let daemon = DaemonProcess::start_in(dir.take().unwrap(), &config);
        assert_eq!(sync_status(&daemon)["active_error"][0], code, "{}", daemon.log());
        let jobs: Value = serde_json::from_slice(&daemon.wfrun(&["jobs", "list", "--json"]).stdout).unwrap();
        assert!(jobs["result"].as_array().unwrap().is_empty(), "no release job is left to run: {jobs}");
        let before = daemon.runs().len();
        std::thread::sleep(Duration::from_millis(800));
        assert_eq!(daemon.runs().len(), before, "nothing runs from damaged files");
        assert_eq!(committed_version(&daemon).as_deref(), Some("1.0.0"), "nothing is rolled back for it");
        if damage == "missing" {
            // A new release brings the device back.
            add("1.1.0", "hello", &["--health", "check"]);
            let back = || committed_version(&daemon).as_deref() == Some("1.1.0") && succeeded(&daemon, "tick") > 0;
            assert!(wait_for(Duration::from_secs(60), back), "{}", sync_status(&daemon));
            assert!(sync_status(&daemon)["active_error"].is_null());
        }
        dir = Some(daemon.into_dir());
    }
}

#[test]
fn a_release_with_a_health_job_passes_or_fails_its_trial_by_that_job() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, add) = ticking_release_repository(dir.path());
    // Its health job runs once, at activation: the trial passes by it, not
    // by the 100 runs a job would otherwise need.
    add("1.0.0", "hello", &["--health", "check"]);
    let server = crate::releases::StaticServer::start(&repo);
    let daemon = DaemonProcess::start(&sync_config(&server, &repo, "trial_runs = 100\n"));
    assert!(
        wait_for(Duration::from_secs(60), || committed_version(&daemon).as_deref() == Some("1.0.0")),
        "{}\n{}",
        sync_status(&daemon),
        daemon.log()
    );
    assert_eq!(sync_status(&daemon)["health"], "check");
    assert_eq!(succeeded(&daemon, "check"), 1, "the health job ran once");
    let ticks = succeeded(&daemon, "tick");
    assert!(ticks < 100, "committed before 100 runs of tick ({ticks})");

    // v2's health job fails: rolled back by that failure's code, v1 back.
    add("2.0.0", "hostile", &["--health", "check"]);
    let store = Store::open(&daemon.state()).unwrap();
    let rolled_back = || store.bad_releases().unwrap().len() == 1;
    assert!(wait_for(Duration::from_secs(60), rolled_back), "{}\n{}", sync_status(&daemon), daemon.log());
    let event = store.release_events(100).unwrap().into_iter().find(|e| e.event == "rolled_back").unwrap();
    assert_eq!(event.code.as_deref(), Some("node_error"), "{event:?}");
    assert_eq!(committed_version(&daemon).as_deref(), Some("1.0.0"));

    // A health job that is not one of the release's jobs is refused when
    // publishing.
    let jobs = dir.path().join("hello.toml");
    let (r, b, j) = (repo.to_str().unwrap(), dir.path().join("hello.wasm"), jobs.to_str().unwrap());
    let args = ["add", r, "--channel", "stable", "--version", "3.0.0", b.to_str().unwrap(), "--jobs", j];
    let out = crate::exec::wfrun().arg("release").args(args).args(["--health", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(6));
}

#[test]
fn trigger_count_starts_that_many_runs_each_on_record_and_is_refused_for_a_job_without_overlap() {
    let hello = guest("hello");
    let daemon = DaemonProcess::start(&format!(
        "[jobs.many]\nbundle = {b}\ninput = '{{\"name\": \"x\"}}'\nallow_overlap = true\n\
         [jobs.one]\nbundle = {b}\ninput = '{{\"name\": \"x\"}}'\n",
        b = toml_path(&hello)
    ));
    let out = daemon.wfrun(&["trigger", "many", "--count", "25"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ids: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(ids.len(), 25);
    assert_eq!(ids.iter().collect::<std::collections::BTreeSet<_>>().len(), 25, "distinct ids");
    // Each id names a record from the moment it is printed.
    assert!(ids.iter().all(|id| daemon.run(id).is_some()));
    assert!(wait_for(Duration::from_secs(60), || ids
        .iter()
        .all(|id| daemon.run(id).is_some_and(|r| r.status == RunStatus::Succeeded))));
    // The runs of one trigger looked their program up once between them.
    let status: Value = serde_json::from_slice(&daemon.wfrun(&["status", "--json"]).stdout).unwrap();
    let programs = &status["result"]["programs"];
    assert_eq!((programs["loads"].as_u64(), programs["hits"].as_u64()), (Some(1), Some(0)), "{programs}");

    let json: Value =
        serde_json::from_slice(&daemon.wfrun(&["trigger", "many", "--count", "2", "--json"]).stdout).unwrap();
    assert_eq!(json["result"]["run_ids"].as_array().map(Vec::len), Some(2), "{json}");

    // A job without overlap runs one at a time; counts out of range are refused.
    for args in [
        &["trigger", "one", "--count", "2"][..],
        &["trigger", "many", "--count", "0"],
        &["trigger", "many", "--count", "1001"],
    ] {
        let out = daemon.wfrun(args);
        assert_eq!(out.status.code(), Some(6), "{args:?}: {}", stderr(&out));
    }
    assert!(daemon.runs().iter().all(|r| r.job.as_deref() == Some("many")), "nothing refused was recorded");
}
