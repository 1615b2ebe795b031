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

const RUNS: usize = 300;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let wfrun = env!("CARGO_BIN_EXE_wfrun");
    let hello = guests::guest("hello");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("wfrun.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nmax_concurrent_runs = 4\n[jobs.hello]\nbundle = {:?}\ninput = '{{\"name\":\"bench\"}}'\nallow_overlap = true\n",
            hello.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut daemon: Child = Command::new(wfrun)
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
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss_kib(daemon.id());

    println!("| benchmark | result | baseline | ratio |");
    println!("|---|---|---|---|");
    println!("| idle daemon, resident memory (no job running) | {:.1} MiB | | |", idle as f64 / 1024.0);

    // Warm the compiled-artifact cache and the pools.
    for _ in 0..5 {
        let response = control::call(&state, "trigger", serde_json::json!({"name": "hello"})).unwrap();
        assert!(response.ok, "{response:?}");
    }
    let store = Store::open(&state).unwrap();
    let done = |store: &Store| store.list_runs(Some(RunStatus::Succeeded), 100_000).unwrap().len();
    while done(&store) < 5 {
        std::thread::sleep(Duration::from_millis(10));
    }

    let started = Instant::now();
    for _ in 0..RUNS {
        let response = control::call(&state, "trigger", serde_json::json!({"name": "hello"})).unwrap();
        assert!(response.ok, "{response:?}");
    }
    while done(&store) < RUNS + 5 {
        assert!(started.elapsed() < Duration::from_secs(600), "runs did not finish");
        std::thread::sleep(Duration::from_millis(5));
    }
    let daemon_time = started.elapsed();
    let busy = rss_kib(daemon.id());
    let _ = daemon.kill();
    let _ = daemon.wait();

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
    let sample = 100;
    let started = Instant::now();
    let mut children = Vec::new();
    for _ in 0..sample {
        if children.len() == 4 {
            let mut first: Child = children.remove(0);
            assert!(first.wait().unwrap().success());
        }
        children.push(exec());
    }
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let exec_time = started.elapsed();

    let daemon_rate = RUNS as f64 / daemon_time.as_secs_f64();
    let exec_rate = sample as f64 / exec_time.as_secs_f64();
    println!(
        "| trigger-to-completion, `hello` node job, {RUNS} triggers over the socket, 4 at a time | {daemon_rate:.0} runs/s | {exec_rate:.0} runs/s (`wfrun exec` processes, 4 at a time) | {:.1}× |",
        daemon_rate / exec_rate
    );
    println!(
        "| daemon resident memory after {RUNS} runs | {:.1} MiB | {:.1} MiB idle | |",
        busy as f64 / 1024.0,
        idle as f64 / 1024.0
    );
}
