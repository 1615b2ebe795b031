//! Reports and heartbeats: a daemon with a `[report]` table against
//! `wfrun fleet serve` on 127.0.0.1 (and, for the failures a receiver can
//! have, a proxy in front of it that answers 429, 503 or 422, or drops the
//! connection after the receiver committed a batch).

use crate::daemon::{DaemonProcess, free_port, stderr, toml_path, wait_for};
use crate::guests::guest;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wfrun_runtime::store::Store;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// `wfrun fleet serve` on a port of its own, stopped when dropped.
pub struct Fleet {
    child: Child,
    pub port: u16,
    pub state: tempfile::TempDir,
}

impl Fleet {
    /// Serves `repo` (if any) on `port`, with device `device`'s token.
    pub fn start(port: u16, device: &str, repo: Option<&Path>) -> Fleet {
        let state = tempfile::tempdir().unwrap();
        let tokens = state.path().join("tokens");
        std::fs::write(&tokens, format!("# devices\n{device}={TOKEN}\n")).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_wfrun"));
        command.arg("--state-dir").arg(state.path().join("fleet")).args(["fleet", "serve", "--listen"]);
        command.arg(format!("127.0.0.1:{port}")).arg("--tokens").arg(&tokens);
        if let Some(repo) = repo {
            command.arg("--repo").arg(repo);
        }
        let child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        assert!(wait_for(Duration::from_secs(30), || TcpStream::connect(("127.0.0.1", port)).is_ok()));
        Fleet { child, port, state }
    }

    fn wfrun(&self, args: &[&str]) -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_wfrun"))
            .arg("--state-dir")
            .arg(self.state.path().join("fleet"))
            .arg("fleet")
            .args(args)
            .arg("--json")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Every report received, oldest first.
    pub fn reports(&self) -> Vec<Value> {
        self.wfrun(&["reports", "--limit", "1000000"]).as_array().unwrap().clone()
    }

    pub fn devices(&self) -> Vec<Value> {
        self.wfrun(&["devices"]).as_array().unwrap().clone()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A device's config: `jobs` hello jobs every 100 ms, reporting to
/// `endpoint`, with `extra` `[report]` lines.
pub fn device_config(dir: &Path, device: &str, endpoint: &str, jobs: &[&str], extra: &str) -> String {
    std::fs::copy(guest("hello"), dir.join("hello.wasm")).unwrap();
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    let mut config = format!(
        "[daemon]\nmax_concurrent_runs = 8\n[device]\nid = \"{device}\"\n[report]\nendpoint = \"{endpoint}\"\n\
         token_file = {}\nheartbeat = \"200ms\"\nbackoff_min = \"50ms\"\nbackoff_max = \"300ms\"\n{extra}\n",
        toml_path(&dir.join("token"))
    );
    for job in jobs {
        config += &format!(
            "[jobs.{job}]\nbundle = {}\nevery = \"100ms\"\ninput = '{{\"name\": \"{job}\"}}'\n",
            toml_path(&dir.join("hello.wasm"))
        );
    }
    config
}

fn runs_report_ids(reports: &[Value]) -> Vec<String> {
    reports
        .iter()
        .filter(|r| r["kind"] == "run")
        .map(|r| r["run"]["execution_id"].as_str().unwrap().to_owned())
        .collect()
}

fn outbox(daemon: &DaemonProcess) -> Value {
    let out = daemon.wfrun(&["status", "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    status["result"]["report"].clone()
}

/// Finished runs in the daemon's store.
fn finished_runs(state: &Path) -> Vec<String> {
    let store = Store::open(state).unwrap();
    let runs = store.list_runs(None, 1_000_000).unwrap();
    runs.into_iter().filter(|r| r.finished_at.is_some()).map(|r| r.run_id).collect()
}

fn pause_all(daemon: &DaemonProcess, jobs: &[&str]) {
    for job in jobs {
        let out = daemon.wfrun(&["jobs", "pause", job]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    // Runs in flight finish.
    std::thread::sleep(Duration::from_millis(500));
}

/// A receiver that is away, holding its port meanwhile: every connection is
/// closed before it gets an answer (the uploader's `unreachable`), and no
/// other test's server can be handed the port while the outage lasts.
struct Away {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Away {
    fn hold() -> Away {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((connection, _)) => drop(connection),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Away { port, stop, thread }
    }

    /// Gives the port back, for the receiver's return.
    fn release(self) -> u16 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
        self.port
    }
}

#[test]
fn after_a_long_outage_every_report_not_dropped_arrives_once_and_drops_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let away = Away::hold();
    let port = away.port;
    let jobs = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let config =
        device_config(dir.path(), "d1", &format!("http://127.0.0.1:{port}"), &jobs, "outbox_max_reports = 300\n");
    let daemon = DaemonProcess::start(&config);

    // The receiver is away while the jobs run hundreds of times.
    let mut deepest = 0;
    let started = Instant::now();
    while finished_runs(&daemon.state()).len() < 1000 && started.elapsed() < Duration::from_secs(120) {
        deepest = deepest.max(outbox(&daemon)["outbox"]["depth"].as_u64().unwrap());
        std::thread::sleep(Duration::from_millis(200));
    }
    let report = outbox(&daemon);
    assert!(report["outbox"]["dropped_total"].as_u64().unwrap() > 0, "the outbox filled: {report}");
    assert!(deepest <= 300 + 1, "the outbox stayed within its bound ({deepest})");
    assert_eq!(report["uploader"]["last_error"][0], "unreachable");

    // It comes back: everything that was not dropped arrives, once.
    let fleet = Fleet::start(away.release(), "d1", None);
    pause_all(&daemon, &jobs);
    let dropped_in = |reports: &[Value]| -> u64 {
        reports.iter().filter(|r| r["kind"] == "outbox_dropped").map(|r| r["dropped"]["count"].as_u64().unwrap()).sum()
    };
    // Drained, and the last runs (finishing after the pause) accounted for.
    let settled = || {
        let reports = fleet.reports();
        outbox(&daemon)["outbox"]["depth"] == 0
            && runs_report_ids(&reports).len() as u64 + dropped_in(&reports)
                == finished_runs(&daemon.state()).len() as u64
    };
    let _ = wait_for(Duration::from_secs(120), settled);
    assert_eq!(outbox(&daemon)["outbox"]["depth"], 0, "{}", outbox(&daemon));
    let reports = fleet.reports();
    let received = runs_report_ids(&reports);
    let mut unique = received.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), received.len(), "no run reported twice");
    let dropped = dropped_in(&reports);
    let runs = finished_runs(&daemon.state());
    assert!(runs.len() >= 1000);
    assert_eq!(received.len() as u64 + dropped, runs.len() as u64, "each run is received or counted as dropped");
    assert!(received.iter().all(|id| runs.contains(id)));
    eprintln!(
        "outage: {} runs, {} reports received, {dropped} dropped, deepest outbox {deepest}",
        runs.len(),
        received.len()
    );
    let devices = fleet.devices();
    assert_eq!(devices[0]["device_id"], "d1");
    assert!(devices[0]["heartbeat"]["outbox"].is_object(), "a heartbeat arrived after the outage: {devices:?}");
}

#[test]
fn kill_9_during_enqueue_and_upload_loses_no_recorded_run_and_duplicates_are_absorbed() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let fleet = Fleet::start(port, "d2", None);
    let jobs = ["a", "b", "c", "d"];
    let config = device_config(dir.path(), "d2", &format!("http://127.0.0.1:{port}"), &jobs, "batch_reports = 7\n");
    // A first start compiles the bundle into the cache, so that every
    // later start runs jobs within milliseconds.
    let daemon = DaemonProcess::start(&config);
    assert!(wait_for(Duration::from_secs(60), || finished_runs(&daemon.state()).len() >= 4));
    let mut state = daemon.into_dir();
    for round in 0..50u64 {
        let mut daemon = DaemonProcess::spawn(state, &config, &[]);
        std::thread::sleep(Duration::from_millis(200 + (round * 53) % 400));
        daemon.signal("-KILL");
        daemon.wait(Duration::from_secs(10));
        state = daemon.into_dir();
    }
    let daemon = DaemonProcess::start_in(state, &config);
    pause_all(&daemon, &jobs);
    assert!(wait_for(Duration::from_secs(120), || outbox(&daemon)["outbox"]["depth"] == 0), "{}", outbox(&daemon));
    let received = runs_report_ids(&fleet.reports());
    let runs = finished_runs(&daemon.state());
    assert!(runs.len() > 50, "the jobs ran between the kills ({})", runs.len());
    let missing: Vec<&String> = runs.iter().filter(|id| !received.contains(id)).collect();
    assert!(missing.is_empty(), "recorded runs whose report never arrived: {missing:?}");
    assert_eq!(received.len(), runs.len(), "each once");
    eprintln!("kill -9 ×50: {} runs recorded, each report received once", runs.len());
    let db = rusqlite::Connection::open(daemon.state().join("wfrun.db")).unwrap();
    let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
}

/// What the proxy does with a request.
#[derive(Clone)]
enum Act {
    Forward,
    /// Forwards, lets the receiver commit, and drops the connection
    /// without answering.
    ForwardThenDrop,
    Answer(u16, Vec<(String, String)>),
}

/// A proxy on 127.0.0.1 in front of `upstream`: `decide(path, body)` says
/// what to do with each request, one connection at a time. It keeps (time, path, answer
/// status) for each.
struct Proxy {
    port: u16,
    log: Arc<Mutex<Vec<(Instant, String, u16)>>>,
}

impl Proxy {
    fn start(upstream: u16, decide: impl Fn(&str, &Value) -> Act + Send + 'static) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let record = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = Vec::new();
                let mut length = 0usize;
                let mut path = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    if path.is_empty() {
                        path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                    if !line.to_ascii_lowercase().starts_with("connection:") {
                        head.extend_from_slice(line.as_bytes());
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let act = decide(&path, &parsed);
                let forward = || {
                    let mut upstream = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                    upstream.write_all(&head).unwrap();
                    upstream.write_all(b"Connection: close\r\n\r\n").unwrap();
                    upstream.write_all(&body).unwrap();
                    let mut answer = Vec::new();
                    let _ = upstream.read_to_end(&mut answer);
                    answer
                };
                let status = match act {
                    Act::Forward => {
                        let answer = forward();
                        let _ = stream.write_all(&answer);
                        String::from_utf8_lossy(&answer[9..12.min(answer.len())]).parse().unwrap_or(0)
                    }
                    Act::ForwardThenDrop => {
                        forward();
                        0
                    }
                    Act::Answer(status, headers) => {
                        let mut text = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n");
                        for (name, value) in headers {
                            text += &format!("{name}: {value}\r\n");
                        }
                        let _ = stream.write_all(format!("{text}\r\n").as_bytes());
                        status
                    }
                };
                record.lock().unwrap().push((Instant::now(), path, status));
            }
        });
        Proxy { port, log }
    }

    fn log(&self) -> Vec<(Instant, String, u16)> {
        self.log.lock().unwrap().clone()
    }
}

const REPORTS: &str = "/runner/v1/reports";
const HEARTBEAT: &str = "/runner/v1/heartbeat";

fn reports_posted(proxy: &Proxy) -> Vec<(Instant, u16)> {
    proxy.log().into_iter().filter(|(_, p, _)| p == REPORTS).map(|(t, _, s)| (t, s)).collect()
}

#[test]
fn a_batch_whose_answer_was_lost_is_sent_again_and_stored_once() {
    // The connection drops after the receiver committed the first batch:
    // the device sends it again, the receiver acknowledges the duplicates.
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(free_port(), "d3", None);
    let dropped = Arc::new(AtomicUsize::new(0));
    let count = dropped.clone();
    let proxy = Proxy::start(fleet.port, move |path, _| {
        if path == REPORTS && count.fetch_add(1, Ordering::SeqCst) == 0 { Act::ForwardThenDrop } else { Act::Forward }
    });
    let config = device_config(dir.path(), "d3", &format!("http://127.0.0.1:{}", proxy.port), &["a"], "");
    let daemon = DaemonProcess::start(&config);
    assert!(wait_for(Duration::from_secs(60), || runs_report_ids(&fleet.reports()).len() >= 5));
    pause_all(&daemon, &["a"]);
    assert!(wait_for(Duration::from_secs(60), || outbox(&daemon)["outbox"]["depth"] == 0), "{}", outbox(&daemon));
    assert_eq!(reports_posted(&proxy)[0].1, 0, "the first batch's answer was lost");
    let received = runs_report_ids(&fleet.reports());
    let mut unique = received.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), received.len(), "the resent batch was absorbed");
    assert_eq!(received.len(), finished_runs(&daemon.state()).len(), "each run once");
}

#[test]
fn retry_after_as_seconds_as_a_date_and_absurd_is_honoured_and_clamped() {
    // 429 with `Retry-After: 1`, 503 with an HTTP date 3 s ahead, 503 with
    // an absurd value (clamped by retry_after_max = 4 s); then delivered.
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(free_port(), "d4", None);
    let answered = AtomicUsize::new(0);
    let proxy = Proxy::start(fleet.port, move |path, _| {
        if path != REPORTS {
            return Act::Forward;
        }
        let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3));
        match answered.fetch_add(1, Ordering::SeqCst) {
            0 => Act::Answer(429, vec![("Retry-After".into(), "1".into())]),
            1 => Act::Answer(503, vec![("Retry-After".into(), date)]),
            2 => Act::Answer(503, vec![("Retry-After".into(), "99999999".into())]),
            _ => Act::Forward,
        }
    });
    let extra = "retry_after_max = \"4s\"\n";
    let config = device_config(dir.path(), "d4", &format!("http://127.0.0.1:{}", proxy.port), &["b"], extra);
    let daemon = DaemonProcess::start(&config);
    let delivered = || reports_posted(&proxy).iter().any(|(_, s)| *s == 200);
    assert!(wait_for(Duration::from_secs(60), delivered), "{:?}\n{}", reports_posted(&proxy), outbox(&daemon));
    let posts = reports_posted(&proxy);
    assert_eq!(posts.iter().take(4).map(|(_, s)| *s).collect::<Vec<_>>(), [429, 503, 503, 200]);
    let gap = |i: usize| posts[i + 1].0 - posts[i].0;
    assert!(gap(0) >= Duration::from_millis(900), "Retry-After: 1 was honoured ({:?})", gap(0));
    // An HTTP date has whole seconds: 3 s ahead is 2 to 3 s away.
    assert!(gap(1) >= Duration::from_millis(1900), "the HTTP date was honoured ({:?})", gap(1));
    assert!(gap(2) >= Duration::from_millis(3900), "the absurd value waited its clamp ({:?})", gap(2));
    assert!(gap(2) < Duration::from_secs(10), "and no longer ({:?})", gap(2));
}

#[test]
fn a_refused_report_is_dead_lettered_and_the_rest_of_its_batch_delivered() {
    // 422 for any batch holding a report of job `poison`: the device
    // splits the batch until each poison report is alone, dead-letters
    // those, and delivers the rest.
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(free_port(), "d6", None);
    let proxy = Proxy::start(fleet.port, move |path, body| {
        let poisoned = body["reports"].as_array().is_some_and(|r| r.iter().any(|r| r["run"]["job"] == "poison"));
        if path == REPORTS && poisoned { Act::Answer(422, vec![]) } else { Act::Forward }
    });
    let config = device_config(dir.path(), "d6", &format!("http://127.0.0.1:{}", proxy.port), &["good", "poison"], "");
    let daemon = DaemonProcess::start(&config);
    std::thread::sleep(Duration::from_secs(2));
    pause_all(&daemon, &["good", "poison"]);
    assert!(wait_for(Duration::from_secs(60), || outbox(&daemon)["outbox"]["depth"] == 0), "{}", outbox(&daemon));
    let store = Store::open(&daemon.state()).unwrap();
    let runs = store.list_runs(None, 1_000_000).unwrap();
    let of = |job: &str| runs.iter().filter(|r| r.job.as_deref() == Some(job) && r.finished_at.is_some()).count();
    assert!(of("poison") > 0 && of("good") > 0);
    let status = outbox(&daemon);
    assert_eq!(status["outbox"]["dead_letters"].as_u64(), Some(of("poison") as u64), "{status}");
    let reports = fleet.reports();
    let received: Vec<&Value> = reports.iter().filter(|r| r["kind"] == "run").collect();
    assert_eq!(received.len(), of("good"), "every good run delivered");
    assert!(received.iter().all(|r| r["run"]["job"] == "good"));
}

/// The JSON examples of `docs/reports.md` that are marked as checked, in
/// order: a run report, then a heartbeat.
fn documented_examples() -> Vec<Value> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/reports.md")).unwrap();
    doc.split("<!-- checked by tests/integration/reports.rs")
        .skip(1)
        .map(|part| {
            let block = part.split("```json\n").nth(1).unwrap().split("\n```").next().unwrap();
            serde_json::from_str(block).unwrap_or_else(|e| panic!("docs/reports.md: an example does not parse: {e}"))
        })
        .collect()
}

/// Asserts `real` has exactly the fields `documented` shows, each of the
/// same JSON type (a `null` on either side stands for an optional value).
fn assert_same_shape(documented: &Value, real: &Value, path: &str) {
    match (documented, real) {
        (Value::Null, _) | (_, Value::Null) => {}
        (Value::Object(d), Value::Object(r)) => {
            let (dk, rk): (Vec<&String>, Vec<&String>) = (d.keys().collect(), r.keys().collect());
            assert_eq!(dk, rk, "{path}: the documented fields are the real ones");
            for (key, value) in d {
                assert_same_shape(value, &r[key], &format!("{path}.{key}"));
            }
        }
        (Value::Array(d), Value::Array(r)) => {
            if let (Some(d), Some(r)) = (d.first(), r.first()) {
                assert_same_shape(d, r, &format!("{path}[0]"));
            }
        }
        (Value::Number(_), Value::Number(_))
        | (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_)) => {}
        (d, r) => panic!("{path}: documented as {d}, really {r}"),
    }
}

#[test]
fn heartbeats_carry_the_active_release_after_an_activation_and_a_rollback_as_documented() {
    use crate::releases::release;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    release(&["init", repo.to_str().unwrap()]);
    std::fs::copy(guest("hello"), dir.path().join("hello.wasm")).unwrap();
    std::fs::copy(guest("hostile"), dir.path().join("hostile.wasm")).unwrap();
    std::fs::write(
        dir.path().join("v1.toml"),
        "[jobs.tick]\nbundle = \"hello.wasm\"\nevery = \"200ms\"\ninput = '{\"name\": \"x\"}'\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("v2.toml"),
        "[jobs.tick]\nbundle = \"hostile.wasm\"\nevery = \"200ms\"\ninput = '{\"mode\": \"fail\"}'\n",
    )
    .unwrap();
    let add = |version: &str, bundle: &str, jobs: &str| {
        let (b, j) = (dir.path().join(bundle), dir.path().join(jobs));
        release(&[
            "add",
            repo.to_str().unwrap(),
            "--channel",
            "stable",
            "--version",
            version,
            b.to_str().unwrap(),
            "--jobs",
            j.to_str().unwrap(),
        ]);
    };
    add("1.0.0", "hello.wasm", "v1.toml");
    let port = free_port();
    let fleet = Fleet::start(port, "d5", Some(&repo));
    let endpoint = format!("http://127.0.0.1:{port}");
    let config = device_config(dir.path(), "d5", &endpoint, &[], "")
        + &format!(
            "[retry]\nmax_attempts = 1\n[sync]\nurl = \"{endpoint}\"\nchannel = \"stable\"\ninterval = \"300ms\"\ntrusted_root = {}\ntrial_runs = 2\n",
            toml_path(&repo.join("metadata/root.json"))
        );
    let _daemon = DaemonProcess::start(&config);
    let active = |fleet: &Fleet| {
        let devices = fleet.devices();
        let heartbeat = devices.first().map(|d| d["heartbeat"].clone()).unwrap_or_default();
        (
            heartbeat["active_release"]["version"].as_str().map(str::to_owned),
            heartbeat["active_release"]["state"].as_str().map(str::to_owned),
        )
    };
    let committed = (Some("1.0.0".to_owned()), Some("committed".to_owned()));
    assert!(wait_for(Duration::from_secs(60), || active(&fleet) == committed), "{:?}", fleet.devices());
    // docs/reports.md shows a run report and a heartbeat as they are.
    let examples = documented_examples();
    assert_eq!(examples.len(), 2);
    let run = fleet.reports().into_iter().find(|r| r["kind"] == "run").expect("a run report");
    assert_same_shape(&examples[0], &run, "run report");
    assert_eq!(examples[0]["schema"], run["schema"]);
    assert_same_shape(&examples[1], &fleet.devices()[0]["heartbeat"], "heartbeat");

    add("2.0.0", "hostile.wasm", "v2.toml");
    let rolled_back = || {
        fleet.reports().iter().any(|r| {
            r["kind"] == "release" && r["release"]["event"] == "rolled_back" && r["release"]["version"] == "2.0.0"
        })
    };
    assert!(wait_for(Duration::from_secs(60), rolled_back), "{:?}", fleet.reports().len());
    let since = fleet.devices()[0]["last_seen"].as_str().unwrap().to_owned();
    assert!(wait_for(Duration::from_secs(30), || fleet.devices()[0]["last_seen"].as_str().unwrap() > since.as_str()));
    assert_eq!(active(&fleet), committed, "after the rollback the heartbeat names v1 again");
    let events: Vec<String> = fleet
        .reports()
        .iter()
        .filter(|r| r["kind"] == "release")
        .map(|r| {
            format!("{} {}", r["release"]["event"].as_str().unwrap(), r["release"]["version"].as_str().unwrap_or(""))
        })
        .collect();
    for expected in ["trial 1.0.0", "committed 1.0.0", "trial 2.0.0", "rolled_back 2.0.0"] {
        assert!(events.iter().any(|e| e == expected), "{expected} among {events:?}");
    }
}

/// One request to 127.0.0.1:`port`; the answer's status and body.
fn post(port: u16, path: &str, token: Option<&str>, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    // The receiver may answer (and close) before taking the whole body.
    let _ = stream.write_all(body);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned())
}

/// A POST with device d7's token that declares `length` bytes and sends
/// none of them; the answer's status.
fn declare(port: u16, path: &str, length: usize) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = [0u8; 12];
    stream.read_exact(&mut answer).unwrap();
    String::from_utf8_lossy(&answer[9..12]).parse().unwrap_or(0)
}

fn get(port: u16, path: &str) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[test]
fn the_receiver_refuses_strangers_impostors_reused_keys_and_oversized_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("metadata")).unwrap();
    std::fs::write(repo.join("metadata/root.json"), "{}").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "not for devices").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), repo.join("metadata/link.json")).unwrap();
    let fleet = Fleet::start(free_port(), "d7", Some(&repo));
    let report = |id: &str, device: &str, note: &str| serde_json::json!({"schema": 1, "report_id": id, "kind": "run", "device_id": device, "note": note});
    let batch = |device: &str, reports: Vec<Value>| {
        serde_json::to_vec(&serde_json::json!({"device_id": device, "reports": reports})).unwrap()
    };
    let code =
        |body: &str| serde_json::from_str::<Value>(body).unwrap_or_default()["error"].as_str().unwrap_or("").to_owned();

    // No token, a wrong one: 401, whatever the body.
    let ok = batch("d7", vec![report("r1", "d7", "a")]);
    assert_eq!(post(fleet.port, REPORTS, None, &ok).0, 401);
    assert_eq!(post(fleet.port, REPORTS, Some("ffffffffffffffffffffffffffffffff"), &ok).0, 401);
    // A token speaks only for its own device.
    assert_eq!(post(fleet.port, REPORTS, Some(TOKEN), &batch("d8", vec![report("r1", "d8", "a")])).0, 403);
    let (status, body) = post(fleet.port, REPORTS, Some(TOKEN), &batch("d7", vec![report("r1", "d8", "a")]));
    assert_eq!((status, code(&body).as_str()), (422, "wrong_device"));
    // Stored once; the same again is a duplicate; the same key with another body is refused.
    let (status, body) = post(fleet.port, REPORTS, Some(TOKEN), &ok);
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()["accepted"].as_u64()), (200, Some(1)));
    let (status, body) = post(fleet.port, REPORTS, Some(TOKEN), &ok);
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()["duplicates"].as_u64()), (200, Some(1)));
    let (status, body) = post(fleet.port, REPORTS, Some(TOKEN), &batch("d7", vec![report("r1", "d7", "changed")]));
    assert_eq!((status, code(&body).as_str()), (422, "key_reused"));
    // A refused batch stores nothing of it.
    let mixed = batch("d7", vec![report("r2", "d7", "b"), serde_json::json!({"kind": "run", "device_id": "d7"})]);
    let (status, body) = post(fleet.port, REPORTS, Some(TOKEN), &mixed);
    assert_eq!((status, code(&body).as_str()), (422, "invalid_report"));
    assert_eq!(post(fleet.port, REPORTS, Some(TOKEN), b"not json").0, 400);
    // Too large: refused on the declared length, before the body is read.
    assert_eq!(declare(fleet.port, REPORTS, 2 * 1024 * 1024), 413);
    assert_eq!(declare(fleet.port, HEARTBEAT, 100 * 1024), 413);
    let reports = fleet.reports();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0]["note"], "a");

    // Static files: the repository's regular files only.
    assert_eq!(get(fleet.port, "/metadata/root.json"), 200);
    assert_eq!(get(fleet.port, "/metadata/link.json"), 404, "a symlink out of the repository is not served");
    assert_eq!(get(fleet.port, "/metadata/../../secret.txt"), 404);
    assert_eq!(get(fleet.port, "/metadata/%2e%2e/%2e%2e/secret.txt"), 404);
    assert_eq!(get(fleet.port, "/keys/root.json"), 404);
}
