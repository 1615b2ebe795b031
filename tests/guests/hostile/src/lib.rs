//! A node that misbehaves on request, one way per `mode`, to prove each of the
//! host's limits and denials. Input: `{"mode": "...", "n": optional number}`.

use std::hint::black_box;
use wfrun_sdk::{NodeError, Value, config, json, log, state};

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    // Keep a frame alive per call so the optimiser cannot turn this into a loop.
    let frame = black_box([depth; 16]);
    recurse(depth + 1) + frame[3]
}

/// What an earlier run left behind in this instance's memory, then leaves
/// marks of its own for the next: a static's value (in the data image) and
/// the count of non-zero words in `n` pages grown past the heap (fresh
/// memory, which must read as zero). A host that reuses memory between runs
/// (the pooling allocator) must hand every run a memory that shows neither.
#[cfg(target_arch = "wasm32")]
fn residue(n: u64) -> Value {
    use std::sync::atomic::{AtomicU64, Ordering};
    static MARK: AtomicU64 = AtomicU64::new(0);
    let seen = MARK.swap(0x5EC2_E7ED, Ordering::SeqCst);
    let pages = n.max(1) as usize;
    let base = core::arch::wasm32::memory_grow(0, pages);
    if base == usize::MAX {
        return json!({"mark": seen, "dirty": null});
    }
    // Pages no allocation owns: read and written only through volatile raw
    // accesses, as a guest probing its memory would.
    let words = base * 65536 / 8;
    let mut dirty = 0u64;
    for i in 0..pages * 65536 / 8 {
        let word = (8 * (words + i)) as *mut u64;
        unsafe {
            if word.read_volatile() != 0 {
                dirty += 1;
            }
            word.write_volatile(0x5EC2_E7ED_5EC2_E7ED);
        }
    }
    json!({"mark": seen, "dirty": dirty})
}

#[cfg(not(target_arch = "wasm32"))]
fn residue(_: u64) -> Value {
    json!({"mark": 0, "dirty": 0})
}

/// `"allowed"`, or `"denied: <io::ErrorKind>"` so tests can match the kind.
fn attempt<T>(r: std::io::Result<T>) -> Value {
    match r {
        Ok(_) => json!("allowed"),
        Err(e) => json!(format!("denied: {:?}", e.kind())),
    }
}

fn hostile(input: Value) -> Result<Value, NodeError> {
    let mode = input["mode"].as_str().unwrap_or("ok").to_owned();
    let n = input["n"].as_u64().unwrap_or(0);
    match mode.as_str() {
        "ok" => Ok(json!({"ok": true})),
        "echo" => Ok(input),
        "loop" => {
            let mut i: u64 = 0;
            loop {
                i = black_box(i.wrapping_add(1));
            }
        }
        "grow" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                black_box(&hoard);
            }
        }
        "recurse" => Ok(json!(recurse(0))),
        "output" => Ok(json!("x".repeat(n as usize))),
        "stdout" => loop {
            println!("{}", "flood ".repeat(100));
        },
        "log" => loop {
            log::info(&"flood ".repeat(100));
        },
        "log-empty" => loop {
            log::info("");
        },
        "sleep" => {
            // Parks in a host call (wasi:io/poll), where epochs cannot reach.
            std::thread::sleep(std::time::Duration::from_secs(3600));
            Ok(json!("woke up"))
        }
        "exit" => std::process::exit(0),
        "trap" => {
            #[cfg(target_arch = "wasm32")]
            core::arch::wasm32::unreachable();
            #[cfg(not(target_arch = "wasm32"))]
            unreachable!()
        }
        "panic" => panic!("hostile guest panics on purpose"),
        "fail" => Err(NodeError::retryable("upstream-busy", "try again later")),
        "ambient" => {
            // Reports what each attempt got instead of failing, so a test can
            // assert on every denial in one run.
            let port = n as u16;
            Ok(json!({
                "read_root": attempt(std::fs::read_dir("/")),
                "read_passwd": attempt(std::fs::read("/etc/passwd")),
                "write_tmp": attempt(std::fs::write("/tmp/wfrun-escape", b"x")),
                "env_count": std::env::vars().count(),
                "tcp_connect": attempt(std::net::TcpStream::connect(("127.0.0.1", port))),
                "udp_bind": attempt(std::net::UdpSocket::bind("127.0.0.1:0")),
                "dns": attempt(std::net::ToSocketAddrs::to_socket_addrs(&("localhost", port))),
            }))
        }
        "files" => {
            // With a granted directory at /data: list it, read `in.txt`, try to
            // write `out.txt` (allowed only when granted read-write).
            let listing: Vec<String> = std::fs::read_dir("/data")
                .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            Ok(json!({
                "listing": listing,
                "read": std::fs::read_to_string("/data/in.txt").ok(),
                "write": attempt(std::fs::write("/data/out.txt", b"written by guest")),
                "env": std::env::var("WFRUN_TEST").ok(),
            }))
        }
        "nap" => {
            std::thread::sleep(std::time::Duration::from_millis(n));
            Ok(json!({"napped_ms": n}))
        }
        "secret" => Ok(json!({"secret": format!("{:?}", config::secret("TOKEN"))})),
        "residue" => Ok(residue(n)),
        "metrics" => {
            // Records metrics, then tries each refusal and says what it got.
            use wfrun_sdk::metrics::{self, MetricError};
            for _ in 0..3 {
                let _ = metrics::counter("calls", 2.0);
            }
            let _ = metrics::gauge("level", 1.0);
            let _ = metrics::gauge("level", 7.5);
            let kind = |r: Result<(), MetricError>| match r {
                Ok(()) => "ok",
                Err(MetricError::TooMany(_)) => "too-many",
                Err(MetricError::InvalidName(_)) => "invalid-name",
                Err(MetricError::InvalidValue(_)) => "invalid-value",
                Err(MetricError::KindMismatch(_)) => "kind-mismatch",
            };
            let bad_name = kind(metrics::gauge("no spaces", 1.0));
            let long_name = kind(metrics::gauge(&"x".repeat(65), 1.0));
            let nan = kind(metrics::gauge("nan", f64::NAN));
            let negative = kind(metrics::counter("calls", -1.0));
            let mismatch = kind(metrics::gauge("calls", 1.0));
            let mut last = "ok";
            for i in 0..n {
                last = kind(metrics::counter(&format!("m{i}"), 1.0));
            }
            Ok(json!({"bad_name": bad_name, "long_name": long_name, "nan": nan, "negative": negative,
                      "mismatch": mismatch, "last": last}))
        }
        "outputs" => {
            // Writes n files of 1 KiB into /outputs, and one in a subdirectory.
            for i in 0..n {
                std::fs::write(format!("/outputs/out-{i}.txt"), vec![b'x'; 1024])
                    .map_err(|e| NodeError::new("no-outputs", e.to_string()))?;
            }
            std::fs::create_dir_all("/outputs/sub").map_err(|e| NodeError::new("no-outputs", e.to_string()))?;
            std::fs::write("/outputs/sub/report.json", br#"{"done": true}"#)
                .map_err(|e| NodeError::new("no-outputs", e.to_string()))?;
            Ok(json!({"written": n + 1}))
        }
        "outputs-flood" => {
            // Writes 1 MiB at a time into /outputs/flood.bin until stopped.
            use std::io::Write;
            let mut file =
                std::fs::File::create("/outputs/flood.bin").map_err(|e| NodeError::new("no-outputs", e.to_string()))?;
            let chunk = vec![b'y'; 1 << 20];
            loop {
                file.write_all(&chunk).map_err(|e| NodeError::new("write-failed", e.to_string()))?;
            }
        }
        "outputs-unlinked" => {
            // Opens /outputs/hidden.bin, deletes it, and writes to it until
            // stopped: the file is in no directory.
            use std::io::Write;
            let mut file =
                std::fs::File::create("/outputs/hidden.bin").map_err(|e| NodeError::new("no-outputs", e.to_string()))?;
            std::fs::remove_file("/outputs/hidden.bin").map_err(|e| NodeError::new("unlink-failed", e.to_string()))?;
            let chunk = vec![b'z'; 1 << 20];
            loop {
                file.write_all(&chunk).map_err(|e| NodeError::new("write-failed", e.to_string()))?;
            }
        }
        "outputs-files" => {
            // Makes empty files in /outputs until stopped.
            let mut i: u64 = 0;
            loop {
                std::fs::write(format!("/outputs/f{i}"), b"")
                    .map_err(|e| NodeError::new("write-failed", e.to_string()))?;
                i += 1;
            }
        }
        "state-fill" => {
            // Writes 1 KiB values until the quota says no; reports how far it got.
            for i in 0.. {
                if let Err(e) = state::set(&format!("key-{i:05}"), &[7u8; 1024]) {
                    return Ok(json!({"written": i, "error": format!("{e:?}")}));
                }
            }
            unreachable!()
        }
        "state-then-fail" => {
            let _ = state::set_json("count", &1_000_000u64);
            Err(NodeError::new("failed-after-write", "this write must not be kept"))
        }
        "flaky" => {
            // Fails retryably until the attempt counter in the granted /data
            // directory reaches n, then succeeds and says which attempt it was.
            let attempts =
                std::fs::read_to_string("/data/attempts").ok().and_then(|t| t.parse::<u64>().ok()).unwrap_or(0) + 1;
            std::fs::write("/data/attempts", attempts.to_string())
                .map_err(|e| NodeError::new("no-data-dir", e.to_string()))?;
            // Each attempt leaves a mark in state; only a successful one may keep it.
            let _ = state::set(&format!("attempt-{attempts}"), b"x");
            if attempts < n {
                return Err(NodeError::retryable("flaky", format!("attempt {attempts} fails")));
            }
            Ok(json!({"attempt": attempts}))
        }
        "http-flood" => {
            // `n` requests to input.url, all in flight at once, responses
            // kept open: returns how many the host let through.
            let url = input["url"].as_str().unwrap_or_default();
            Ok(json!(http_flood(url, n)))
        }
        other => Err(NodeError::invalid_input(format!("unknown mode {other:?}"))),
    }
}

/// Sends `n` GETs to `url` (`http://host:port/path`) without waiting for
/// any, then waits for all and keeps every response (and so its connection)
/// open until the end. Returns `{"ok": N, "refused": M, "other": K}`.
fn http_flood(url: &str, n: u64) -> Value {
    use wasip2::http::{outgoing_handler, types};
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut futures = Vec::new();
    for _ in 0..n {
        let request = types::OutgoingRequest::new(types::Fields::new());
        let _ = request.set_scheme(Some(&types::Scheme::Http));
        let _ = request.set_authority(Some(authority));
        let _ = request.set_path_with_query(Some(if path.is_empty() { "/" } else { path }));
        let body = request.body().expect("a fresh request has a body");
        futures.push(outgoing_handler::handle(request, None));
        let _ = types::OutgoingBody::finish(body, None);
    }
    let (mut ok, mut refused, mut other) = (0, 0, 0);
    let mut kept = Vec::new();
    for future in futures {
        match future {
            Err(_) => other += 1,
            Ok(future) => {
                future.subscribe().block();
                match future.get() {
                    Some(Ok(Ok(response))) => {
                        ok += 1;
                        kept.push(response);
                    }
                    Some(Ok(Err(types::ErrorCode::ConnectionLimitReached))) => refused += 1,
                    _ => other += 1,
                }
            }
        }
    }
    let result = json!({"ok": ok, "refused": refused, "other": other});
    drop(kept);
    result
}

wfrun_sdk::node!(hostile);
