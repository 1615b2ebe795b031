//! Start-up and per-run cost of wfrun, each against a baseline measured in
//! the same run (these machines are noisy; ratios travel, absolutes less so).
//!
//! Run with `cargo bench -p wfrun-runtime --bench exec`. Prints a Markdown
//! table; `docs/performance.md` records one run of it.
//!
//! 1. In-process instantiate + run of a trivial node (`hello`): p50, p99,
//!    runs per second on one core.
//! 2. wfrun's sandbox vs bare wasmtime (default engine, no WASI, no limits)
//!    instantiating and calling the same no-op command component: the cost
//!    of limits, capture and the report.
//! 3. A CPU-bound guest with fuel metering on vs off: the cost of fuel.
//! 4. Process-level `wfrun exec hello.wasm` start to exit (run record in
//!    SQLite included), compiling every time (`--no-cache`) vs loading from
//!    the artifact cache.
//! 5. Warm `wfrun exec` vs `wasmtime run` (wasmtime-cli 48, which caches
//!    compiled code too) on the same command component, when `WASMTIME`
//!    names its binary (`scripts/bench.sh` installs it).
//! 6. First load (compile) vs cached load of the largest guest fixture.
//! 7. Sign and verify a 10 MiB bundle vs SHA-256 of the same bytes.

#[path = "../../tests/integration/guests.rs"]
#[allow(dead_code)]
mod guests;

/// The `cpu` guest's work, built natively as the baseline.
#[path = "../../tests/guests/cpu/src/work.rs"]
mod native;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wfrun_runtime::bundle::Bundle;
use wfrun_runtime::outcome::RunStatus;
use wfrun_runtime::sandbox::{EngineOptions, Limits, PoolingOptions, RunRequest, Sandbox};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Times `iterations` calls of `f` after `warmup` untimed ones.
fn sample(warmup: usize, iterations: usize, mut f: impl FnMut()) -> (Vec<Duration>, Duration) {
    for _ in 0..warmup {
        f();
    }
    let mut times = Vec::with_capacity(iterations);
    let started = Instant::now();
    for _ in 0..iterations {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    let total = started.elapsed();
    times.sort();
    (times, total)
}

/// Two things timed in turn, `a` then `b` then `b` then `a` …: each side's
/// times (sorted) and the pair-wise ratios a/b (sorted).
struct Pair {
    a: Vec<Duration>,
    b: Vec<Duration>,
    ratios: Vec<f64>,
}

impl Pair {
    /// Times `a` and `b` `rounds` times each, in turn (which goes first
    /// alternates), after `warmup` untimed calls of each.
    fn time(warmup: usize, rounds: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> Pair {
        for _ in 0..warmup {
            a();
            b();
        }
        let timed = |f: &mut dyn FnMut()| {
            let started = Instant::now();
            f();
            started.elapsed()
        };
        let (mut ta, mut tb) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
        for round in 0..rounds {
            if round % 2 == 0 {
                ta.push(timed(&mut a));
                tb.push(timed(&mut b));
            } else {
                tb.push(timed(&mut b));
                ta.push(timed(&mut a));
            }
        }
        let mut ratios: Vec<f64> = ta.iter().zip(&tb).map(|(a, b)| a.as_secs_f64() / b.as_secs_f64()).collect();
        ratios.sort_by(f64::total_cmp);
        ta.sort();
        tb.sort();
        Pair { a: ta, b: tb, ratios }
    }

    fn a50(&self) -> Duration {
        percentile(&self.a, 0.5)
    }

    fn b50(&self) -> Duration {
        percentile(&self.b, 0.5)
    }

    /// The ratio column: the median pair-wise ratio, with min and max.
    fn ratio(&self, digits: usize) -> String {
        let r = &self.ratios;
        format!(
            "{:.digits$}× (median of {} pair-wise ratios; min {:.digits$}×, max {:.digits$}×)",
            r[r.len() / 2],
            r.len(),
            r[0],
            r[r.len() - 1]
        )
    }
}

/// How many of the functions `runtime/link/symbol-order.txt` lists the
/// binary still has: the warm-`exec` rows depend on the linker placing them
/// side by side, and a list older than the build (a dependency or the
/// compiler changed) loses that. `scripts/symbol-order.py` writes it anew.
fn symbol_order(binary: &str) -> String {
    let list = concat!(env!("CARGO_MANIFEST_DIR"), "/link/symbol-order.txt");
    let Ok(listed) = std::fs::read_to_string(list) else { return "no list".to_owned() };
    let Ok(nm) = Command::new("nm").args(["--defined-only", binary]).output() else {
        return "not counted: no `nm`".to_owned();
    };
    let defined: std::collections::HashSet<&str> = std::str::from_utf8(&nm.stdout)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    let listed: Vec<&str> = listed.lines().filter(|l| !l.is_empty()).collect();
    let found = listed.iter().filter(|name| defined.contains(*name)).count();
    format!("{found} of {}", listed.len())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let sandbox = Sandbox::new(EngineOptions::default()).unwrap();
    let hello_path = guests::guest("hello");
    let cpu_path = guests::guest("cpu");

    println!("| benchmark | result | baseline | ratio |");
    println!("|---|---|---|---|");

    // 1. In-process trivial node.
    let hello = sandbox.load(&std::fs::read(&hello_path).unwrap(), "hello.wasm").unwrap();
    let request = RunRequest { input: r#"{"name":"bench"}"#.to_owned(), ..RunRequest::default() };
    let (times, total) = sample(200, 5000, || {
        let report = runtime.block_on(sandbox.run(&hello, &request));
        assert_eq!(report.status, RunStatus::Succeeded);
    });
    println!(
        "| in-process instantiate+run, `hello` node | p50 {:.1} µs, p99 {:.1} µs, {:.0} runs/s | | |",
        micros(percentile(&times, 0.5)),
        micros(percentile(&times, 0.99)),
        times.len() as f64 / total.as_secs_f64()
    );

    // 1b. The same with the pooling allocator (for long-lived hosts).
    let pooled = Sandbox::new(EngineOptions {
        pooling: Some(PoolingOptions::new(4, Limits::DEFAULT_MEMORY_BYTES)),
        ..EngineOptions::default()
    })
    .unwrap();
    let pooled_hello = pooled.load(&std::fs::read(&hello_path).unwrap(), "hello.wasm").unwrap();
    let request = RunRequest { input: r#"{"name":"bench"}"#.to_owned(), ..RunRequest::default() };
    let pair = Pair::time(
        200,
        5000,
        || assert_eq!(runtime.block_on(pooled.run(&pooled_hello, &request)).status, RunStatus::Succeeded),
        || assert_eq!(runtime.block_on(sandbox.run(&hello, &request)).status, RunStatus::Succeeded),
    );
    println!(
        "| in-process `hello`, pooling allocator vs on demand (p50, interleaved) | {:.1} µs | {:.1} µs | {} |",
        micros(pair.a50()),
        micros(pair.b50()),
        pair.ratio(2)
    );
    drop(pooled);

    // 2. Sandbox vs bare wasmtime on a no-op command.
    let noop = guests::wat("noop-job");
    let program = sandbox.load(&noop, "noop-job.wasm").unwrap();
    let request = RunRequest::default();
    let pair = Pair::time(
        200,
        5000,
        || assert_eq!(runtime.block_on(sandbox.run(&program, &request)).status, RunStatus::Succeeded),
        bare_wasmtime(&noop),
    );
    println!(
        "| no-op command, sandbox vs bare wasmtime (p50, interleaved) | {:.1} µs | {:.1} µs | {} |",
        micros(pair.a50()),
        micros(pair.b50()),
        pair.ratio(2)
    );

    // 3. Fuel metering on vs off, CPU-bound guest.
    let unmetered = Sandbox::new(EngineOptions { fuel_metering: false, ..EngineOptions::default() }).unwrap();
    let cpu_bundle = std::fs::read(&cpu_path).unwrap();
    let metered_cpu = sandbox.load(&cpu_bundle, "cpu.wasm").unwrap();
    let unmetered_cpu = unmetered.load(&cpu_bundle, "cpu.wasm").unwrap();
    let request = RunRequest {
        input: r#"{"n":3}"#.to_owned(),
        limits: Limits { fuel: u64::MAX / 2, ..Limits::default() },
        ..RunRequest::default()
    };
    let no_epochs = Sandbox::new(EngineOptions { epoch_interruption: false, ..EngineOptions::default() }).unwrap();
    let no_epochs_cpu = no_epochs.load(&cpu_bundle, "cpu.wasm").unwrap();
    let fuel_used = std::cell::Cell::new(0);
    let on = || {
        let report = runtime.block_on(sandbox.run(&metered_cpu, &request));
        assert_eq!(report.status, RunStatus::Succeeded, "{report:?}");
        fuel_used.set(report.fuel_consumed);
    };
    let off = || assert_eq!(runtime.block_on(unmetered.run(&unmetered_cpu, &request)).status, RunStatus::Succeeded);
    let epochs_off =
        || assert_eq!(runtime.block_on(no_epochs.run(&no_epochs_cpu, &request)).status, RunStatus::Succeeded);
    let native = || {
        std::hint::black_box(native::work(std::hint::black_box(3)));
    };
    let fuel = Pair::time(2, 15, on, off);
    println!(
        "| CPU-bound node (sieve, sort, hash map, recursion), fuel on vs off (p50, interleaved) | {:.1} ms ({:.2} G fuel/s) | {:.1} ms | {} |",
        millis(fuel.a50()),
        fuel_used.get() as f64 / fuel.a50().as_secs_f64() / 1e9,
        millis(fuel.b50()),
        fuel.ratio(2)
    );
    let epochs = Pair::time(2, 15, on, epochs_off);
    println!(
        "| same node, epoch deadline on vs off (both metering fuel; p50, interleaved) | {:.1} ms | {:.1} ms | {} |",
        millis(epochs.a50()),
        millis(epochs.b50()),
        epochs.ratio(2)
    );
    let wasm = Pair::time(2, 15, off, native);
    println!(
        "| same work: wasm without fuel vs native (p50, interleaved; includes instantiation and JSON) | {:.1} ms | {:.1} ms (native) | {} |",
        millis(wasm.a50()),
        millis(wasm.b50()),
        wasm.ratio(2)
    );

    // 4. Process-level `wfrun exec`, compiling vs cached.
    let wfrun = env!("CARGO_BIN_EXE_wfrun");
    let state = tempfile::tempdir().unwrap();
    let exec = |extra: &[&str], path: &std::path::Path, args: &[&str]| {
        let status = Command::new(wfrun)
            .env("WFRUN_DIR", state.path())
            .arg("exec")
            .args(extra)
            .arg(path)
            .args(["--quiet"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "wfrun exec {} failed; run it by hand to see why", path.display());
    };
    let hello_input = ["--input", r#"{"name":"bench"}"#];
    let pair =
        Pair::time(3, 30, || exec(&[], &hello_path, &hello_input), || exec(&["--no-cache"], &hello_path, &hello_input));
    println!(
        "| `wfrun exec hello.wasm`, start to exit, run recorded (p50, interleaved), cached vs `--no-cache` | {:.2} ms | {:.1} ms | {} |",
        millis(pair.a50()),
        millis(pair.b50()),
        pair.ratio(3)
    );

    // 4b. Cached `exec` of the Python and JavaScript hello nodes against the
    // Rust one, interleaved (Rust, Python, JS, Rust, ...), and their peak
    // resident memory.
    if std::env::var("WFRUN_BENCH_POLYGLOT").as_deref() != Ok("0") {
        let nodes = [
            ("rust", hello_path.clone()),
            ("python", guests::polyglot("python-hello")),
            ("js", guests::polyglot("js-hello")),
        ];
        for (_, path) in &nodes {
            exec(&[], path, &hello_input);
        }
        // The steady state of a cached exec: the bundles and the artifacts
        // the warm-up just compiled, unchanged for the two seconds after
        // which their identities stand in for their hashes
        // (`files::SETTLED`), then one more run that records them. Until
        // then each run hashes the bundle and the artifact.
        std::thread::sleep(Duration::from_millis(2200));
        for (_, path) in &nodes {
            exec(&[], path, &hello_input);
        }
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); nodes.len()];
        for _ in 0..25 {
            for (i, (_, path)) in nodes.iter().enumerate() {
                let started = Instant::now();
                exec(&[], path, &hello_input);
                times[i].push(millis(started.elapsed()));
            }
        }
        let peak_mib = |path: &std::path::Path| {
            let out = Command::new("/usr/bin/time")
                .args(["-f", "%M"])
                .arg(wfrun)
                .env("WFRUN_DIR", state.path())
                .arg("exec")
                .arg(path)
                .args(["--quiet"])
                .args(hello_input)
                .stdout(Stdio::null())
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stderr);
            text.lines().last().and_then(|l| l.trim().parse::<f64>().ok()).map_or(f64::NAN, |kib| kib / 1024.0)
        };
        let median = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        for (i, (name, path)) in nodes.iter().enumerate().skip(1) {
            let mut ratios: Vec<f64> = times[i].iter().zip(&times[0]).map(|(a, b)| a / b).collect();
            ratios.sort_by(f64::total_cmp);
            println!(
                "| cached `wfrun exec {name}-hello.wasm` vs the Rust `hello.wasm` (p50 of 25 interleaved; peak RSS) | {:.1} ms, {:.1} MiB | {:.1} ms, {:.1} MiB | {:.2}× (median of pair-wise ratios; min {:.2}×, max {:.2}×) |",
                median(&times[i]),
                peak_mib(path),
                median(&times[0]),
                peak_mib(&nodes[0].1),
                median(&ratios),
                ratios[0],
                ratios[ratios.len() - 1]
            );
        }
    }

    // 5. Warm `wfrun exec` vs `wasmtime run` on the same command component.
    const PAIRS: usize = 100;
    let job_path = guests::guest("hello-job");
    match std::env::var_os("WASMTIME") {
        Some(wasmtime) => {
            let wasmtime_run = || {
                let status = Command::new(&wasmtime)
                    .arg("run")
                    .arg(&job_path)
                    .arg("bench")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .unwrap();
                assert!(status.success());
            };
            // Ours with the same stdio as theirs: `exec` sends stdout and
            // stderr to /dev/null (the job writes to both).
            let wfrun_exec = || exec(&[], &job_path, &["--", "bench"]);
            // Both binaries in the same state: written out and dropped from
            // the page cache, then read back by their first starts below, as
            // after a reboot. How a binary's file got into the page cache
            // moves its start by a millisecond: a fresh copy starts fastest,
            // one the linker has just written or one installed long ago
            // slower, so our just-built binary against an installed
            // `wasmtime` would compare two different things.
            for binary in [std::path::Path::new(wfrun), std::path::Path::new(&wasmtime)] {
                let file = std::fs::File::open(binary).unwrap();
                file.sync_all().unwrap();
                rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
            }
            // Both warm (their caches filled, our bundle settled), then
            // interleaved: ours, theirs, ours, theirs …
            for _ in 0..3 {
                wfrun_exec();
                wasmtime_run();
            }
            std::thread::sleep(Duration::from_millis(2100));
            // A pause after each run: work a process leaves behind as it
            // exits (our `exec` leaves its memory's unmapping to a helper,
            // runtime::cli::exit) does not overlap the other side's run.
            let settle = || std::thread::sleep(Duration::from_millis(5));
            let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..PAIRS {
                let t = Instant::now();
                wfrun_exec();
                let a = t.elapsed();
                settle();
                let t = Instant::now();
                wasmtime_run();
                let b = t.elapsed();
                settle();
                ours.push(a);
                theirs.push(b);
                ratios.push(a.as_secs_f64() / b.as_secs_f64());
            }
            ours.sort();
            theirs.sort();
            ratios.sort_by(f64::total_cmp);
            println!(
                "| warm `wfrun exec hello-job.wasm` vs `wasmtime run` (p50 of {PAIRS} interleaved, stdout and stderr to /dev/null, run recorded on our side) | {:.2} ms | {:.2} ms | {:.2}× (median of pair-wise ratios; min {:.2}×, max {:.2}×) |",
                millis(percentile(&ours, 0.5)),
                millis(percentile(&theirs, 0.5)),
                ratios[ratios.len() / 2],
                ratios[0],
                ratios[ratios.len() - 1]
            );
        }
        None => println!("| warm `wfrun exec` vs `wasmtime run` | skipped: set WASMTIME or run scripts/bench.sh | | |"),
    }
    println!(
        "| functions of `runtime/link/symbol-order.txt` in this binary (placed side by side) | {} | | |",
        symbol_order(wfrun)
    );

    // 6. Compile vs cached load of the largest fixture.
    let cpu_bytes = std::fs::read(&cpu_path).unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let cached_sandbox =
        Sandbox::new(EngineOptions { cache_dir: Some(cache_dir.path().join("c")), ..EngineOptions::default() })
            .unwrap();
    let bundle = cpu_bytes.clone();
    cached_sandbox.load(&bundle, "cpu.wasm").unwrap();
    let pair = Pair::time(
        1,
        10,
        || {
            let loaded = cached_sandbox.load(&bundle, "cpu.wasm").unwrap();
            assert_eq!(loaded.origin(), wfrun_runtime::sandbox::Origin::Cached);
        },
        || {
            let fresh = Sandbox::new(EngineOptions::default()).unwrap();
            fresh.load(&bundle, "cpu.wasm").unwrap();
        },
    );
    println!(
        "| load of `cpu.wasm` ({} KiB): cached vs compiled (p50, interleaved) | {:.2} ms | {:.1} ms | {} |",
        cpu_bytes.len() / 1024,
        millis(pair.a50()),
        millis(pair.b50()),
        pair.ratio(3)
    );

    // 7. Sign and verify 10 MiB.
    use wfrun_runtime::bundle::signature::{self, SecretKey};
    let mut big = wasm_encoder::Component::new();
    let filler: Vec<u8> = (0..10 * 1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    big.section(&wasm_encoder::CustomSection { name: "filler".into(), data: filler.into() });
    let big = big.finish();
    let key = SecretKey::from_seed([9; 32]);
    let trusted = vec![key.public()];
    let signed = signature::embed(&big, &key.sign(&big));
    // Each signed copy is kept until the next replaces it, as a signer
    // keeps its output until written.
    let last = std::cell::RefCell::new(Vec::new());
    let sign = || {
        let bundle = Bundle::from_bytes("big.wasm", big.clone()).unwrap();
        *last.borrow_mut() = signature::embed(bundle.bytes(), &key.sign(bundle.bytes()));
    };
    let verify = || {
        let bundle = Bundle::from_bytes("big.wasm", signed.clone()).unwrap();
        bundle.verify(None, &trusted, true).unwrap();
    };
    let hash = || {
        std::hint::black_box(sha2::Digest::finalize(sha2::Digest::chain_update(
            <sha2::Sha256 as sha2::Digest>::new(),
            &big,
        )));
    };
    for (what, pair) in [("sign", Pair::time(2, 15, sign, hash)), ("verify", Pair::time(2, 15, verify, hash))] {
        println!(
            "| {what} a 10 MiB bundle (read, parse, hash, ed25519) (p50, interleaved) | {:.1} ms | {:.1} ms (SHA-256 alone) | {} |",
            millis(pair.a50()),
            millis(pair.b50()),
            pair.ratio(2)
        );
    }
}

/// Bare wasmtime: default engine, empty linker, a fresh store per call.
fn bare_wasmtime(bytes: &[u8]) -> impl FnMut() {
    use wasmtime::component::{Component, Linker};
    use wasmtime::{Engine, Store};
    let engine = Engine::default();
    let component = Component::new(&engine, bytes).unwrap();
    let pre = Linker::<()>::new(&engine).instantiate_pre(&component).unwrap();
    move || {
        let mut store = Store::new(&engine, ());
        let instance = pre.instantiate(&mut store).unwrap();
        let cli = instance.get_export_index(&mut store, None, "wasi:cli/run@0.2.0").unwrap();
        let run = instance.get_export_index(&mut store, Some(&cli), "run").unwrap();
        let run = instance.get_typed_func::<(), (Result<(), ()>,)>(&mut store, &run).unwrap();
        assert_eq!(run.call(&mut store, ()).unwrap(), (Ok(()),));
    }
}
