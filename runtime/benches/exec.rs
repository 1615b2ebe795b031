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
    let (pooled_times, pooled_total) = sample(200, 5000, || {
        let report = runtime.block_on(pooled.run(&pooled_hello, &request));
        assert_eq!(report.status, RunStatus::Succeeded);
    });
    println!(
        "| in-process `hello`, pooling allocator vs on demand (p50) | {:.1} µs ({:.0} runs/s) | {:.1} µs | {:.2}× |",
        micros(percentile(&pooled_times, 0.5)),
        pooled_times.len() as f64 / pooled_total.as_secs_f64(),
        micros(percentile(&times, 0.5)),
        percentile(&pooled_times, 0.5).as_secs_f64() / percentile(&times, 0.5).as_secs_f64()
    );
    drop(pooled);

    // 2. Sandbox vs bare wasmtime on a no-op command.
    let noop = guests::wat("noop-job");
    let program = sandbox.load(&noop, "noop-job.wasm").unwrap();
    let request = RunRequest::default();
    let (ours, _) = sample(200, 5000, || {
        let report = runtime.block_on(sandbox.run(&program, &request));
        assert_eq!(report.status, RunStatus::Succeeded);
    });
    let bare = bare_wasmtime(&noop);
    let (theirs, _) = sample(200, 5000, bare);
    let (ours50, theirs50) = (percentile(&ours, 0.5), percentile(&theirs, 0.5));
    println!(
        "| no-op command, sandbox vs bare wasmtime (p50) | {:.1} µs | {:.1} µs | {:.2}× |",
        micros(ours50),
        micros(theirs50),
        ours50.as_secs_f64() / theirs50.as_secs_f64()
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
    let mut fuel_used = 0;
    let (on, _) = sample(2, 15, || {
        let report = runtime.block_on(sandbox.run(&metered_cpu, &request));
        assert_eq!(report.status, RunStatus::Succeeded, "{report:?}");
        fuel_used = report.fuel_consumed;
    });
    let (off, _) = sample(2, 15, || {
        let report = runtime.block_on(unmetered.run(&unmetered_cpu, &request));
        assert_eq!(report.status, RunStatus::Succeeded);
    });
    let no_epochs = Sandbox::new(EngineOptions { epoch_interruption: false, ..EngineOptions::default() }).unwrap();
    let no_epochs_cpu = no_epochs.load(&cpu_bundle, "cpu.wasm").unwrap();
    let (epochs_off, _) = sample(2, 15, || {
        let report = runtime.block_on(no_epochs.run(&no_epochs_cpu, &request));
        assert_eq!(report.status, RunStatus::Succeeded);
    });
    let (native_times, _) = sample(2, 15, || {
        std::hint::black_box(native::work(std::hint::black_box(3)));
    });
    let (on50, off50, native50) = (percentile(&on, 0.5), percentile(&off, 0.5), percentile(&native_times, 0.5));
    println!(
        "| CPU-bound node (sieve, sort, hash map, recursion), fuel on vs off (p50) | {:.1} ms ({:.2} G fuel/s) | {:.1} ms | {:.2}× |",
        millis(on50),
        fuel_used as f64 / on50.as_secs_f64() / 1e9,
        millis(off50),
        on50.as_secs_f64() / off50.as_secs_f64()
    );
    let epochs_off50 = percentile(&epochs_off, 0.5);
    println!(
        "| same node, epoch deadline on vs off (both metering fuel; p50) | {:.1} ms | {:.1} ms | {:.2}× |",
        millis(on50),
        millis(epochs_off50),
        on50.as_secs_f64() / epochs_off50.as_secs_f64()
    );
    println!(
        "| same work: wasm without fuel vs native (p50; includes instantiation and JSON) | {:.1} ms | {:.1} ms (native) | {:.2}× |",
        millis(off50),
        millis(native50),
        off50.as_secs_f64() / native50.as_secs_f64()
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
    let (compiling, _) = sample(3, 30, || exec(&["--no-cache"], &hello_path, &hello_input));
    let (cached, _) = sample(3, 30, || exec(&[], &hello_path, &hello_input));
    let (compiling50, cached50) = (percentile(&compiling, 0.5), percentile(&cached, 0.5));
    println!(
        "| `wfrun exec hello.wasm`, start to exit, run recorded (p50), cached vs `--no-cache` | {:.2} ms | {:.1} ms | {:.2}× |",
        millis(cached50),
        millis(compiling50),
        cached50.as_secs_f64() / compiling50.as_secs_f64()
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
    let (compile, _) = sample(1, 10, || {
        let fresh = Sandbox::new(EngineOptions::default()).unwrap();
        fresh.load(&bundle, "cpu.wasm").unwrap();
    });
    cached_sandbox.load(&bundle, "cpu.wasm").unwrap();
    let (load, _) = sample(2, 20, || {
        assert_eq!(cached_sandbox.load(&bundle, "cpu.wasm").unwrap().origin(), wfrun_runtime::sandbox::Origin::Cached);
    });
    let (compile50, load50) = (percentile(&compile, 0.5), percentile(&load, 0.5));
    println!(
        "| load of `cpu.wasm` ({} KiB): cached vs compiled (p50) | {:.2} ms | {:.1} ms | {:.3}× |",
        cpu_bytes.len() / 1024,
        millis(load50),
        millis(compile50),
        load50.as_secs_f64() / compile50.as_secs_f64()
    );

    // 7. Sign and verify 10 MiB.
    use wfrun_runtime::bundle::signature::{self, SecretKey};
    let mut big = wasm_encoder::Component::new();
    let filler: Vec<u8> = (0..10 * 1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    big.section(&wasm_encoder::CustomSection { name: "filler".into(), data: filler.into() });
    let big = big.finish();
    let key = SecretKey::from_seed([9; 32]);
    let trusted = vec![key.public()];
    let mut signed = Vec::new();
    let (sign_times, _) = sample(2, 15, || {
        let bundle = Bundle::from_bytes("big.wasm", big.clone()).unwrap();
        signed = signature::embed(bundle.bytes(), &key.sign(bundle.bytes()));
    });
    let (verify_times, _) = sample(2, 15, || {
        let bundle = Bundle::from_bytes("big.wasm", signed.clone()).unwrap();
        bundle.verify(None, &trusted, true).unwrap();
    });
    let (hash_times, _) = sample(2, 15, || {
        std::hint::black_box(sha2::Digest::finalize(sha2::Digest::chain_update(
            <sha2::Sha256 as sha2::Digest>::new(),
            &big,
        )));
    });
    let hash50 = percentile(&hash_times, 0.5);
    for (what, times) in [("sign", &sign_times), ("verify", &verify_times)] {
        let t50 = percentile(times, 0.5);
        println!(
            "| {what} a 10 MiB bundle (read, parse, hash, ed25519) (p50) | {:.1} ms | {:.1} ms (SHA-256 alone) | {:.2}× |",
            millis(t50),
            millis(hash50),
            t50.as_secs_f64() / hash50.as_secs_f64()
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
