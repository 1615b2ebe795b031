//! HTTP and socket egress against real servers on 127.0.0.1, started and
//! stopped inside each test: what a policy allows gets through; everything
//! else is refused before a connection is opened, visible to the guest (a
//! node error from the `fetch` example), and recorded in the run's
//! `policy_violations`.

use crate::exec::wfrun;
use crate::guests::guest;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A small HTTP/1.1 server on 127.0.0.1 with a few fixed routes, counting
/// the connections it accepts:
///
/// - `/hello`: 200 with a short text body;
/// - `/redirect?to=URL`: 302 to URL;
/// - `/big?n=N`: 200 with N bytes and a Content-Length;
/// - `/stream?n=N`: 200 with N bytes and no length (read until close);
/// - `/hang`: reads the request and never answers.
struct TestServer {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped) = (connections.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let stopped = stopped.clone();
                std::thread::spawn(move || serve(stream, &stopped));
            }
        });
        TestServer { addr, connections, stop, thread: Some(thread) }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port())
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(mut stream: TcpStream, stop: &AtomicBool) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let request = String::from_utf8_lossy(&request);
    let target = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let param = |name: &str| {
        query.split('&').find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('='))).unwrap_or("")
    };
    let respond = |stream: &mut TcpStream, head: &str, body: &[u8]| {
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(body);
        let _ = stream.flush();
    };
    match path {
        "/hello" => {
            let body = b"hello from the test server";
            respond(
                &mut stream,
                &format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()),
                body,
            );
        }
        "/redirect" => respond(
            &mut stream,
            &format!(
                "HTTP/1.1 302 Found\r\nLocation: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                param("to")
            ),
            b"",
        ),
        "/big" => {
            let body = vec![b'x'; param("n").parse().unwrap_or(0)];
            respond(
                &mut stream,
                &format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()),
                &body,
            );
        }
        "/stream" => {
            let body = vec![b'y'; param("n").parse().unwrap_or(0)];
            respond(&mut stream, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", &body);
        }
        "/hang" => {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        _ => respond(&mut stream, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", b""),
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Runs the `fetch` example on `url` with extra `flags`; returns the exit
/// status and the `--json` report.
fn fetch(url: &str, flags: &[&str]) -> (i32, Value) {
    let fetch = guest("fetch");
    let input = json!({ "url": url }).to_string();
    let output =
        wfrun().args(["exec", fetch.to_str().unwrap(), "--json", "--input", &input]).args(flags).output().unwrap();
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
    (output.status.code().unwrap(), report)
}

/// Writes `dir/policy.toml`, allowing `server` and adding `extra` to the
/// `[egress]` table.
fn policy_file(dir: &std::path::Path, server: &TestServer, extra: &str) -> std::path::PathBuf {
    let path = dir.join("policy.toml");
    std::fs::write(&path, format!("[egress]\nallow = [\"http://127.0.0.1:{}\"]\n{extra}\n", server.port())).unwrap();
    path
}

/// The one violation in `report`, checked to be of `rule_set`.
fn violation<'a>(report: &'a Value, rule_set: &str) -> &'a Value {
    let violations = report["policy_violations"].as_array().unwrap();
    assert_eq!(violations.len(), 1, "{report:#}");
    assert_eq!(violations[0]["rule_set"], rule_set, "{report:#}");
    &violations[0]
}

#[test]
fn an_allowed_request_gets_the_response() {
    let server = TestServer::start();
    let rule = format!("http://127.0.0.1:{}", server.port());
    let (status, report) = fetch(&server.url("/hello"), &["--allow-host", &rule]);
    assert_eq!(status, 0, "{report:#}");
    assert_eq!(report["output"], json!({"status": 200, "body": "hello from the test server"}));
    assert_eq!(report["policy_violations"], json!([]));
}

#[test]
fn nothing_is_allowed_without_a_grant_and_no_connection_is_opened() {
    let server = TestServer::start();
    let (status, report) = fetch(&server.url("/hello"), &[]);
    assert_eq!(status, 3, "{report:#}");
    assert_eq!(report["node_error"]["code"], "http-denied");
    let v = violation(&report, "operator");
    assert_eq!(v["target"], format!("http://127.0.0.1:{}", server.port()));
    assert!(v["reason"].as_str().unwrap().contains("--allow-host"), "{v}");
    assert_eq!(server.connections(), 0);
}

#[test]
fn host_port_and_scheme_mismatches_are_refused_before_connecting() {
    let server = TestServer::start();
    let port = server.port();
    for (rule, why) in [
        (format!("http://example.com:{port}"), "host"),
        (format!("http://127.0.0.1:{}", port.wrapping_add(1).max(1)), "port"),
        (format!("https://127.0.0.1:{port}"), "scheme"),
        ("http://*.example.com:*".to_owned(), "a subdomain wildcard against an address"),
    ] {
        let (status, report) = fetch(&server.url("/hello"), &["--allow-host", &rule]);
        assert_eq!(status, 3, "{why}: {report:#}");
        violation(&report, "operator");
    }
    assert_eq!(server.connections(), 0);
}

#[test]
fn a_redirect_to_a_host_the_policy_refuses_is_not_followed() {
    let allowed = TestServer::start();
    let other = TestServer::start();
    let url = allowed.url(&format!("/redirect?to={}", other.url("/hello")));
    let (status, report) = fetch(&url, &["--allow-host", &format!("http://127.0.0.1:{}", allowed.port())]);
    assert_eq!(status, 3, "{report:#}");
    let v = violation(&report, "operator");
    assert_eq!(v["target"], format!("http://127.0.0.1:{}", other.port()));
    assert_eq!((allowed.connections(), other.connections()), (1, 0));

    // With both granted, the SDK follows the hop, and the host never did it
    // on its own: `max_redirects: 0` sees the 302 itself.
    let both = ["--allow-host", "http://127.0.0.1:*"];
    let (status, report) = fetch(&url, &both);
    assert_eq!(status, 0, "{report:#}");
    assert_eq!(report["output"]["body"], "hello from the test server");
    let fetch_wasm = guest("fetch");
    let input = json!({"url": url, "max_redirects": 0}).to_string();
    let output = wfrun().args(["exec", fetch_wasm.to_str().unwrap(), "--input", &input]).args(both).output().unwrap();
    let output: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(output["status"], 302);
}

#[test]
fn localhost_is_refused_without_an_ip_rule_and_allowed_with_one() {
    let server = TestServer::start();
    let url = format!("http://localhost:{}/hello", server.port());
    let by_name = format!("http://localhost:{}", server.port());
    let (status, report) = fetch(&url, &["--allow-host", &by_name]);
    assert_eq!(status, 3, "{report:#}");
    let v = violation(&report, "address");
    assert!(v["reason"].as_str().unwrap().contains("loopback"), "{v}");
    // `*` never opens a private address either.
    let (status, report) = fetch(&url, &["--allow-host", "http://*:*"]);
    assert_eq!(status, 3, "{report:#}");
    violation(&report, "address");
    assert_eq!(server.connections(), 0);

    let by_ip = format!("http://127.0.0.0/8:{}", server.port());
    let (status, report) = fetch(&url, &["--allow-host", &by_name, "--allow-host", &by_ip]);
    assert_eq!(status, 0, "{report:#}");
    assert_eq!(report["output"]["status"], 200);
}

#[test]
fn other_spellings_of_loopback_do_not_get_through() {
    let server = TestServer::start();
    let port = server.port();
    // Mapped IPv6 forms are the IPv4 address, and the address check refuses it.
    for host in ["[::ffff:127.0.0.1]", "[::ffff:7f00:1]"] {
        let (status, report) = fetch(&format!("http://{host}:{port}/hello"), &["--allow-host", "http://*:*"]);
        assert_eq!(status, 3, "{host}: {report:#}");
        violation(&report, "address");
    }
    // Spellings a resolver reads as 127.0.0.1 are refused before any lookup,
    // even where the rule names 127.0.0.1 itself.
    for host in ["2130706433", "0177.0.0.1", "0x7f.0.0.1", "127.1"] {
        let rules = ["--allow-host", "http://*:*", "--allow-host", "http://127.0.0.1:*"];
        let (status, report) = fetch(&format!("http://{host}:{port}/hello"), &rules);
        assert_eq!(status, 3, "{host}: {report:#}");
        violation(&report, "operator");
    }
    assert_eq!(server.connections(), 0);
}

#[test]
fn responses_larger_than_the_limit_are_cut() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_file(dir.path(), &server, "max_response_body = \"64KiB\"");
    let policy = policy.to_str().unwrap();
    for path in ["/big?n=200000", "/stream?n=200000"] {
        let (status, report) = fetch(&server.url(path), &["--policy", policy]);
        assert_eq!(status, 3, "{path}: {report:#}");
        assert!(
            report["node_error"]["message"].as_str().unwrap().contains("larger than the host allows"),
            "{report:#}"
        );
        let v = violation(&report, "limits");
        assert!(v["reason"].as_str().unwrap().contains("max_response_body"), "{v}");
    }
    let (status, report) = fetch(&server.url("/big?n=60000"), &["--policy", policy]);
    assert_eq!(status, 0, "{report:#}");
    assert_eq!(report["output"]["body"].as_str().unwrap().len(), 60000);
}

#[test]
fn a_server_that_never_answers_loses_to_the_run_deadline() {
    let server = TestServer::start();
    let rule = format!("http://127.0.0.1:{}", server.port());
    let started = Instant::now();
    let (status, report) = fetch(&server.url("/hang"), &["--allow-host", &rule, "--timeout", "1s"]);
    let elapsed = started.elapsed();
    assert_ne!(status, 0, "{report:#}");
    assert!(["timeout", "node_error"].contains(&report["error_code"].as_str().unwrap()), "{report:#}");
    assert!(elapsed < Duration::from_secs(8), "the run took {elapsed:?}");
    assert_eq!(server.connections(), 1);
}

#[test]
fn sockets_need_a_socket_rule() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hostile = guest("hostile");
    let input = json!({"mode": "ambient", "n": port}).to_string();
    let run = |flags: &[&str]| -> Value {
        let output = wfrun()
            .args(["exec", hostile.to_str().unwrap(), "--json", "--input", &input])
            .args(flags)
            .output()
            .unwrap();
        serde_json::from_slice(&output.stdout).unwrap()
    };
    // An HTTP grant is not a socket grant.
    let report = run(&["--allow-host", &format!("http://127.0.0.1:{port}")]);
    assert!(report["output"]["tcp_connect"].as_str().unwrap().starts_with("denied"), "{report:#}");
    listener.set_nonblocking(true).unwrap();
    assert_eq!(listener.accept().unwrap_err().kind(), std::io::ErrorKind::WouldBlock);

    let report = run(&["--allow-host", &format!("tcp://127.0.0.1:{port}")]);
    assert_eq!(report["output"]["tcp_connect"], "allowed", "{report:#}");
    // Name lookups stay off even with a socket grant.
    assert!(report["output"]["dns"].as_str().unwrap().starts_with("denied"), "{report:#}");
    listener.set_nonblocking(false).unwrap();
    assert!(listener.accept().is_ok());
}

#[test]
fn a_workflow_gets_what_both_it_requests_and_the_operator_grants() {
    let server = TestServer::start();
    let other = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let fetch = guest("fetch");
    let manifest = dir.path().join("workflow.toml");
    std::fs::write(
        &manifest,
        format!(
            "name = \"egress\"\nversion = \"1\"\n[capabilities]\negress = [\"http://127.0.0.1:{}\", \"https://api.example.com\"]\n\
             [nodes.get]\ncomponent = {:?}\n",
            server.port(),
            fetch.to_str().unwrap()
        ),
    )
    .unwrap();
    let bundle = dir.path().join("egress.wasm");
    let packed = wfrun().args(["pack", manifest.to_str().unwrap(), "-o", bundle.to_str().unwrap()]).output().unwrap();
    assert!(packed.status.success(), "{}", String::from_utf8_lossy(&packed.stderr));
    let run = |url: String| {
        let input = json!({"url": url}).to_string();
        let output = wfrun()
            .args(["exec", bundle.to_str().unwrap(), "--json", "--allow-host", "http://127.0.0.1:*", "--input", &input])
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        (output.status.code().unwrap(), report, String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (status, report, stderr) = run(server.url("/hello"));
    assert_eq!(status, 0, "{report:#}");
    assert_eq!(report["egress_not_granted"], json!(["https://api.example.com"]));
    assert!(stderr.contains("did not grant: https://api.example.com"), "{stderr}");

    // The operator allows any port on 127.0.0.1; the bundle asked for one.
    let (status, report, _) = run(other.url("/hello"));
    assert_eq!(status, 3, "{report:#}");
    let v = violation(&report, "bundle");
    assert_eq!(v["node"], "get");
    assert_eq!(other.connections(), 0);

    // The refusal is in the run record too.
    let shown = wfrun().args(["runs", "show", report["run_id"].as_str().unwrap()]).output().unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("egress refused (1)") && shown.contains("[bundle]"), "{shown}");
}

#[test]
fn bad_rules_and_policy_files_are_named() {
    let fetch = guest("fetch");
    let output = wfrun().args(["exec", fetch.to_str().unwrap(), "--allow-host", "https://api.*.com"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("api.*.com"));

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[egress]\nallow = [\"https://ok.example\"]\nmax_body = \"1MiB\"\n").unwrap();
    let output = wfrun()
        .args(["exec", fetch.to_str().unwrap(), "--json", "--policy", policy.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(6));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let message = report["error_message"].as_str().unwrap();
    assert!(message.contains("policy.toml") && message.contains("max_body"), "{message}");
}

#[test]
fn a_run_cannot_open_more_requests_than_the_policy_allows() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_file(dir.path(), &server, "max_concurrent_requests = 2");
    let hostile = guest("hostile");
    let input = json!({"mode": "http-flood", "n": 5, "url": server.url("/hello")}).to_string();
    let output = wfrun()
        .args(["exec", hostile.to_str().unwrap(), "--json", "--policy", policy.to_str().unwrap(), "--input", &input])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["output"], json!({"ok": 2, "refused": 3, "other": 0}), "{report:#}");
    let violations = report["policy_violations"].as_array().unwrap();
    assert_eq!(violations.len(), 3, "{report:#}");
    assert!(violations.iter().all(|v| v["rule_set"] == "limits"), "{report:#}");
    assert_eq!(server.connections(), 2);
}
