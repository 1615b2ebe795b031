//! `wfrun release`: repositories wfrun writes, checked by python-tuf, the
//! reference TUF client (installed into a venv by `tests/tuf/setup.sh` on
//! first use), over a static file server on 127.0.0.1 started here.

use crate::exec::wfrun;
use crate::guests::{guest, root};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use wfrun_runtime::manifest::ReleaseDocument;

/// The venv's python with python-tuf, installed once per test process.
pub fn python_tuf() -> &'static Path {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = Command::new(root().join("tests/tuf/setup.sh")).output().expect("running tests/tuf/setup.sh");
        assert!(out.status.success(), "tests/tuf/setup.sh failed: {}", String::from_utf8_lossy(&out.stderr));
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// A static file server for `dir` on 127.0.0.1, stopped when dropped:
/// GET only, 404 for anything that is not a file under `dir`. It keeps the
/// path of every request, and can be taken offline (connections closed
/// unanswered) and back on the same port.
pub struct StaticServer {
    port: u16,
    stop: Arc<AtomicBool>,
    offline: Arc<AtomicBool>,
    requests: Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StaticServer {
    pub fn start(dir: &Path) -> StaticServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let offline = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (dir, flag, away, log) = (dir.to_path_buf(), stop.clone(), offline.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut stream) = stream else { continue };
                if away.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is reset unanswered
                }
                let mut line = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                // Skip the headers.
                let mut header = String::new();
                while reader.read_line(&mut header).map(|n| n > 2).unwrap_or(false) {
                    header.clear();
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                log.lock().unwrap().push(path.clone());
                let file = dir.join(path.trim_start_matches('/'));
                let body = (!path.contains("..")).then(|| std::fs::read(&file).ok()).flatten();
                let _ = match body {
                    Some(body) => stream
                        .write_all(
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                                .as_bytes(),
                        )
                        .and_then(|()| stream.write_all(&body)),
                    None => {
                        stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    }
                };
            }
        });
        StaticServer { port, stop, offline, requests, thread: Some(thread) }
    }

    /// The paths requested so far, in order, and forgets them.
    pub fn take_requests(&self) -> Vec<String> {
        std::mem::take(&mut *self.requests.lock().unwrap())
    }

    /// Takes the server offline (`true`) or back (`false`).
    pub fn set_offline(&self, offline: bool) {
        self.offline.store(offline, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// python-tuf's client: (exit status, its JSON answer or its error).
pub fn python_client(
    server: &StaticServer,
    work: &Path,
    trusted_root: &Path,
    targets: &[&str],
) -> (i32, Value, String) {
    let out = Command::new(python_tuf())
        .arg(root().join("tests/tuf/client.py"))
        .arg(server.url())
        .arg(work)
        .arg(trusted_root)
        .args(targets)
        .output()
        .unwrap();
    let answer = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), answer, String::from_utf8_lossy(&out.stderr).into_owned())
}

pub fn release(args: &[&str]) -> std::process::Output {
    let out = wfrun().arg("release").args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "wfrun release {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A repository with channel `stable` at 1.0.0: the `hello` bundle and a
/// job running it.
pub fn repository(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    release(&["init", repo.to_str().unwrap(), "--threshold", "root=2"]);
    std::fs::copy(guest("hello"), dir.join("hello.wasm")).unwrap();
    std::fs::write(
        dir.join("jobs.toml"),
        "[jobs.hi]\nbundle = \"hello.wasm\"\nevery = \"30s\"\ninput = '{\"name\": \"fleet\"}'\n",
    )
    .unwrap();
    let hello = dir.join("hello.wasm");
    let jobs = dir.join("jobs.toml");
    release(&[
        "add",
        repo.to_str().unwrap(),
        "--channel",
        "stable",
        "--version",
        "1.0.0",
        hello.to_str().unwrap(),
        "--jobs",
        jobs.to_str().unwrap(),
    ]);
    repo
}

#[test]
fn python_tuf_accepts_a_repository_wfrun_writes_and_follows_new_releases() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path());
    let trusted_root = repo.join("metadata/1.root.json");
    let server = StaticServer::start(&repo);
    let work = dir.path().join("device");
    let bundle = "bundles/stable/1.0.0/hello.wasm";
    let (status, answer, error) = python_client(&server, &work, &trusted_root, &["releases/stable.json", bundle]);
    assert_eq!(status, 0, "python-tuf refused wfrun's repository: {error}");
    let downloaded = |name: &str, answer: &Value| std::fs::read(answer["targets"][name].as_str().unwrap()).unwrap();
    assert_eq!(downloaded(bundle, &answer), std::fs::read(guest("hello")).unwrap());
    let document: ReleaseDocument = serde_json::from_slice(&downloaded("releases/stable.json", &answer)).unwrap();
    assert_eq!((document.channel.as_str(), document.version.as_str()), ("stable", "1.0.0"));
    assert_eq!(document.jobs["hi"].bundle, Path::new(bundle), "a job names its bundle by target name");
    assert_eq!(document.bundles[0].length, std::fs::metadata(guest("hello")).unwrap().len());

    // A second release, then a fresh timestamp: the same client (keeping its
    // trusted metadata) follows both.
    std::fs::copy(guest("stats"), dir.path().join("stats.wasm")).unwrap();
    let stats = dir.path().join("stats.wasm");
    release(&["add", repo.to_str().unwrap(), "--channel", "stable", "--version", "1.1.0", stats.to_str().unwrap()]);
    release(&["timestamp", repo.to_str().unwrap()]);
    let (status, answer, error) = python_client(&server, &work, &trusted_root, &["releases/stable.json"]);
    assert_eq!(status, 0, "{error}");
    assert_eq!(answer["versions"]["targets"], 3);
    assert_eq!(answer["versions"]["timestamp"], 4);
    let document: ReleaseDocument = serde_json::from_slice(&downloaded("releases/stable.json", &answer)).unwrap();
    assert_eq!(document.version, "1.1.0");

    let status: Value = serde_json::from_slice(&release(&["status", repo.to_str().unwrap(), "--json"]).stdout).unwrap();
    assert_eq!(status["channels"]["stable"]["version"], "1.1.0");
    assert_eq!(status["roles"]["timestamp"]["version"], 4);
}

#[test]
fn python_tuf_refuses_what_was_changed_after_signing() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path());
    let trusted_root = repo.join("metadata/1.root.json");
    let server = StaticServer::start(&repo);
    let bundle = "bundles/stable/1.0.0/hello.wasm";

    // A timestamp whose signed content changed: its signature no longer holds.
    let timestamp = repo.join("metadata/timestamp.json");
    let original = std::fs::read_to_string(&timestamp).unwrap();
    std::fs::write(&timestamp, original.replacen("\"version\": 2\n  }", "\"version\": 3\n  }", 1)).unwrap();
    assert_ne!(std::fs::read_to_string(&timestamp).unwrap(), original, "the edit applied");
    let (status, _, error) = python_client(&server, &dir.path().join("a"), &trusted_root, &["releases/stable.json"]);
    assert_eq!(status, 1, "a forged timestamp was accepted");
    assert!(!error.is_empty());
    std::fs::write(&timestamp, &original).unwrap();

    // A target whose bytes changed: refused against its signed hash.
    let files = std::fs::read_dir(repo.join("targets/bundles/stable/1.0.0")).unwrap();
    let file = files.map(|e| e.unwrap().path()).next().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let (status, _, _) = python_client(&server, &dir.path().join("b"), &trusted_root, &[bundle]);
    assert_eq!(status, 1, "a changed bundle was accepted");

    // A root threshold of 2 met by one key signing twice is no threshold.
    let root = repo.join("metadata/1.root.json");
    let mut signed: Value = serde_json::from_slice(&std::fs::read(&root).unwrap()).unwrap();
    let first = signed["signatures"][0].clone();
    signed["signatures"] = Value::Array(vec![first.clone(), first]);
    let forged = dir.path().join("forged-root.json");
    std::fs::write(&forged, serde_json::to_vec(&signed).unwrap()).unwrap();
    let (status, _, _) = python_client(&server, &dir.path().join("c"), &forged, &["releases/stable.json"]);
    assert_eq!(status, 1, "a duplicated signature met the root threshold");
}

#[test]
fn release_mistakes_are_refused_with_exit_6() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path());
    let hello = dir.path().join("hello.wasm");
    let run = |args: &[&str]| wfrun().arg("release").args(args).output().unwrap().status.code();
    let add = |version: &str, extra: &[&str]| {
        let mut args = vec!["add", repo.to_str().unwrap(), "--channel", "stable", "--version", version];
        args.push(hello.to_str().unwrap());
        args.extend_from_slice(extra);
        run(&args)
    };
    assert_eq!(add("0.9.0", &[]), Some(6), "a downgrade without --rollback-approved");
    assert_eq!(add("0.9.0", &["--rollback-approved"]), Some(0));
    assert_eq!(add("not-semver", &[]), Some(6));
    let stranger = dir.path().join("jobs-other.toml");
    std::fs::write(&stranger, "[jobs.x]\nbundle = \"elsewhere.wasm\"\n").unwrap();
    assert_eq!(
        add("2.0.0", &["--jobs", stranger.to_str().unwrap()]),
        Some(6),
        "a job naming a bundle not in the release"
    );
    assert_eq!(run(&["init", repo.to_str().unwrap()]), Some(6), "init over an existing repository");
    assert_eq!(run(&["status", dir.path().join("nothing").to_str().unwrap()]), Some(6));
    std::fs::remove_file(repo.join("keys/targets.key")).unwrap();
    assert_eq!(add("3.0.0", &[]), Some(6), "publishing without the targets key");
}
