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
//!    SQLite included) vs spawning `/bin/true`: what a shell script pays per
//!    call.

#[path = "../../tests/integration/guests.rs"]
#[allow(dead_code)]
mod guests;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wfrun_runtime::bundle::Bundle;
use wfrun_runtime::outcome::RunStatus;
use wfrun_runtime::sandbox::{EngineOptions, Limits, RunRequest, Sandbox};

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

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let sandbox = Sandbox::new(EngineOptions::default()).unwrap();
    let hello_path = guests::guest("hello");
    let cpu_path = guests::guest("cpu");

    println!("| benchmark | result | baseline | ratio |");
    println!("|---|---|---|---|");

    // 1. In-process trivial node.
    let hello = sandbox.load(&Bundle::read(&hello_path).unwrap()).unwrap();
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

    // 2. Sandbox vs bare wasmtime on a no-op command.
    let noop = guests::wat("noop-job");
    let program = sandbox.load(&Bundle::from_bytes("noop-job.wasm", noop.clone()).unwrap()).unwrap();
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
    let cpu_bundle = Bundle::read(&cpu_path).unwrap();
    let metered_cpu = sandbox.load(&cpu_bundle).unwrap();
    let unmetered_cpu = unmetered.load(&cpu_bundle).unwrap();
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
    let (on50, off50) = (percentile(&on, 0.5), percentile(&off, 0.5));
    println!(
        "| CPU-bound node (sieve, sort, hash map, recursion), fuel on vs off (p50) | {:.1} ms ({:.2} G fuel/s) | {:.1} ms | {:.2}× |",
        millis(on50),
        fuel_used as f64 / on50.as_secs_f64() / 1e9,
        millis(off50),
        on50.as_secs_f64() / off50.as_secs_f64()
    );

    // 4. Process-level `wfrun exec`.
    let wfrun = env!("CARGO_BIN_EXE_wfrun");
    let state = tempfile::tempdir().unwrap();
    let (exec, _) = sample(3, 40, || {
        let status = Command::new(wfrun)
            .env("WFRUN_DIR", state.path())
            .args(["exec", hello_path.to_str().unwrap(), "--quiet", "--input", r#"{"name":"bench"}"#])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    });
    let (spawn, _) = sample(3, 40, || {
        assert!(Command::new("/bin/true").status().unwrap().success());
    });
    let (exec50, spawn50) = (percentile(&exec, 0.5), percentile(&spawn, 0.5));
    println!(
        "| `wfrun exec hello.wasm`, start to exit, run recorded (p50; compiles every time, no cache yet) | {:.1} ms | {:.2} ms (`/bin/true`) | {:.0}× |",
        millis(exec50),
        millis(spawn50),
        exec50.as_secs_f64() / spawn50.as_secs_f64()
    );
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
