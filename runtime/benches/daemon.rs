//! Daemon benchmarks: trigger-to-completion throughput for a trivial node
//! job, against the same runs as separate `wfrun exec` processes, and the
//! idle daemon's memory.
//!
//! `cargo bench -p wfrun-runtime --bench daemon` (or `scripts/bench.sh`).
//! Prints a markdown table; the numbers go into `docs/performance.md`.

#[path = "../../tests/integration/guests.rs"]
#[allow(dead_code)]
mod guests;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wfrun_runtime::daemon::control;
use wfrun_runtime::outcome::RunStatus;
use wfrun_runtime::store::Store;

/// Triggers per daemon batch, and `wfrun exec` processes per exec batch.
const DAEMON_BATCH: usize = 200;
const EXEC_BATCH: usize = 40;
/// Batches of each, interleaved: daemon, exec, daemon, exec, ...
const ROUNDS: usize = 5;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Starts `wfrun daemon` on a fresh state directory under `dir` with one
/// `hello` job and `extra` config lines; returns it once its socket answers.
fn start_daemon(
    dir: &std::path::Path,
    name: &str,
    hello: &std::path::Path,
    extra: &str,
) -> (Child, std::path::PathBuf) {
    let state = dir.join(name);
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[daemon]\nmax_concurrent_runs = 4\n{extra}\n[jobs.hello]\nbundle = {:?}\ninput = '{{\"name\":\"bench\"}}'\nallow_overlap = true\n",
            hello.to_str().unwrap()
        ),
    )
    .unwrap();
    let daemon: Child = Command::new(env!("CARGO_BIN_EXE_wfrun"))
        .args(["daemon", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let socket = state.join("wfrun.sock");
    let started = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "the daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (daemon, state)
}

/// Triggers a daemon's `hello` job and counts its finished runs.
struct Driver {
    state: std::path::PathBuf,
    store: Store,
    finished: usize,
}

impl Driver {
    fn new(state: std::path::PathBuf) -> Driver {
        let store = Store::open(&state).unwrap();
        Driver { state, store, finished: 0 }
    }

    fn done(&self) -> usize {
        self.store.list_runs(Some(RunStatus::Succeeded), 1_000_000).unwrap().len()
    }

    /// `n` triggers over the socket; returns runs per second, trigger of
    /// the first to completion of the last.
    fn batch(&mut self, n: usize) -> f64 {
        let started = Instant::now();
        for _ in 0..n {
            let response = control::call(&self.state, "trigger", serde_json::json!({"name": "hello"})).unwrap();
            assert!(response.ok, "{response:?}");
        }
        self.finished += n;
        while self.done() < self.finished {
            assert!(started.elapsed() < Duration::from_secs(600), "runs did not finish");
            std::thread::sleep(Duration::from_millis(2));
        }
        n as f64 / started.elapsed().as_secs_f64()
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The median of the pair-wise ratios, with min and max.
fn ratios(pairs: &[(f64, f64)]) -> (f64, f64, f64) {
    let ratios: Vec<f64> = pairs.iter().map(|(a, b)| a / b).collect();
    let (min, max) = ratios.iter().fold((f64::MAX, 0.0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    (median(ratios), min, max)
}

fn main() {
    let wfrun = env!("CARGO_BIN_EXE_wfrun");
    let hello = guests::guest("hello");
    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, state) = start_daemon(dir.path(), "state", &hello, "");
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss_kib(daemon.id());

    println!("| benchmark | result | baseline | ratio |");
    println!("|---|---|---|---|");
    println!("| idle daemon, resident memory (no job running) | {:.1} MiB | | |", idle as f64 / 1024.0);

    // Warm the compiled-artifact cache and the pools.
    let mut plain = Driver::new(state.clone());
    plain.batch(5);

    // Baseline: the same runs as `wfrun exec` processes, four at a time.
    let exec_state = dir.path().join("exec-state");
    let exec = || {
        Command::new(wfrun)
            .env("WFRUN_DIR", &exec_state)
            .args(["exec", "-q", hello.to_str().unwrap(), "--input", r#"{"name":"bench"}"#])
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    exec().wait().unwrap();
    let exec_batch = || {
        let started = Instant::now();
        let mut children = Vec::new();
        for _ in 0..EXEC_BATCH {
            if children.len() == 4 {
                let mut first: Child = children.remove(0);
                assert!(first.wait().unwrap().success());
            }
            children.push(exec());
        }
        for mut child in children {
            assert!(child.wait().unwrap().success());
        }
        EXEC_BATCH as f64 / started.elapsed().as_secs_f64()
    };
    // Interleaved, so that both sides see the same machine: the ratio of
    // each pair is what is reported, not the ratio of two medians.
    let mut pairs = Vec::new();
    for _ in 0..ROUNDS {
        let daemon_rate = plain.batch(DAEMON_BATCH);
        let exec_rate = exec_batch();
        pairs.push((daemon_rate, exec_rate));
    }
    let busy = rss_kib(daemon.id());

    // The cost of reporting: the same daemon with a `[report]` table, so
    // that each run's record and its report commit in one transaction with
    // synchronous = FULL (an fsync per run), against the plain daemon
    // (synchronous = NORMAL in WAL mode: no fsync at commit). The endpoint
    // is a closed loopback port, so the uploader only backs off and the
    // difference is the durable write.
    let (mut reporting, reporting_state) = start_daemon(
        dir.path(),
        "reporting",
        &hello,
        "[report]\nendpoint = \"http://127.0.0.1:9\"\noutbox_max_reports = 100000\nbackoff_min = \"10s\"\nbackoff_max = \"60s\"",
    );
    let mut durable = Driver::new(reporting_state);
    durable.batch(5);
    let mut report_pairs = Vec::new();
    for _ in 0..ROUNDS {
        let with = durable.batch(DAEMON_BATCH);
        let without = plain.batch(DAEMON_BATCH);
        report_pairs.push((with, without));
    }
    for child in [&mut daemon, &mut reporting] {
        let _ = child.kill();
        let _ = child.wait();
    }

    let (ratio, min, max) = ratios(&pairs);
    println!(
        "| trigger-to-completion, `hello` node job, {ROUNDS} batches of {DAEMON_BATCH} triggers over the socket, 4 at a time | {:.0} runs/s (median batch) | {:.0} runs/s (`wfrun exec` processes, 4 at a time, {ROUNDS} batches of {EXEC_BATCH}, interleaved) | {ratio:.1}× (median of pair-wise ratios; min {min:.1}×, max {max:.1}×) |",
        median(pairs.iter().map(|p| p.0).collect()),
        median(pairs.iter().map(|p| p.1).collect()),
    );
    println!(
        "| daemon resident memory after {} runs | {:.1} MiB | {:.1} MiB idle | |",
        ROUNDS * DAEMON_BATCH + 5,
        busy as f64 / 1024.0,
        idle as f64 / 1024.0
    );
    let (ratio, min, max) = ratios(&report_pairs);
    println!(
        "| the same with a `[report]` table: run record and report in one synchronous = FULL commit | {:.0} runs/s (median batch) | {:.0} runs/s (no `[report]`, interleaved) | {ratio:.2}× (median of pair-wise ratios; min {min:.2}×, max {max:.2}×) |",
        median(report_pairs.iter().map(|p| p.0).collect()),
        median(report_pairs.iter().map(|p| p.1).collect()),
    );
}
