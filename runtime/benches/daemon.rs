//! Daemon benchmarks: trigger-to-completion throughput and latency of a
//! trivial node job, against the in-process pooled run of the same node and
//! against `wfrun exec` processes, all measured in one run, interleaved; the
//! cost of `[report]`; memory over a long soak; and the Python and
//! JavaScript nodes in the daemon.
//!
//! `cargo bench -p wfrun-runtime --bench daemon` (or `scripts/bench.sh`).
//! `WFRUN_BENCH_SOAK=N` sets the soak's runs (100,000 by default; 0 skips
//! it), `WFRUN_BENCH_POLYGLOT=0` skips the Python and JavaScript rows.
//! Prints a markdown table; the numbers go into `docs/performance.md`.

#[path = "../../tests/integration/guests.rs"]
#[allow(dead_code)]
mod guests;

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wfrun_runtime::outcome::RunStatus;
use wfrun_runtime::sandbox::{EngineOptions, Limits, PoolingOptions, RunRequest, Sandbox};

/// Runs per daemon batch (and per in-process batch), triggered in requests
/// of `TRIGGER_COUNT` runs each.
const BATCH: usize = 2000;
const TRIGGER_COUNT: usize = 100;
/// `wfrun exec` processes per exec batch.
const EXEC_BATCH: usize = 40;
/// Batches of each side, interleaved: A, B, A, B, ...
const ROUNDS: usize = 7;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A running `wfrun daemon` with one connection to its control socket.
struct Daemon {
    child: Child,
    state: PathBuf,
    control: BufReader<UnixStream>,
    db: rusqlite::Connection,
    next_id: u64,
}

impl Daemon {
    /// Starts `wfrun daemon` on a fresh state directory `dir/name` with
    /// `jobs` (TOML tables) and `extra` config lines.
    fn start(dir: &Path, name: &str, jobs: &str, extra: &str) -> Daemon {
        Daemon::start_binary(Path::new(env!("CARGO_BIN_EXE_wfrun")), dir, name, jobs, extra)
    }

    /// [`Daemon::start`] with another `wfrun` binary.
    fn start_binary(wfrun: &Path, dir: &Path, name: &str, jobs: &str, extra: &str) -> Daemon {
        let state = dir.join(name);
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, format!("[daemon]\nmax_concurrent_runs = 4\n{extra}\n{jobs}")).unwrap();
        let child = Command::new(wfrun)
            .args(["daemon", "--config"])
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let socket = state.join("wfrun.sock");
        let started = Instant::now();
        let stream = loop {
            if let Ok(stream) = UnixStream::connect(&socket) {
                break stream;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "the daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        let db = rusqlite::Connection::open(state.join("wfrun.db")).unwrap();
        db.busy_timeout(Duration::from_secs(30)).unwrap();
        Daemon { child, state, control: BufReader::new(stream), db, next_id: 0 }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let mut line = json!({"id": self.next_id, "method": method, "params": params}).to_string();
        line.push('\n');
        self.control.get_mut().write_all(line.as_bytes()).unwrap();
        let mut answer = String::new();
        self.control.read_line(&mut answer).unwrap();
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["ok"], true, "{answer}");
        answer["result"].clone()
    }

    /// Triggers `n` runs of `job`, `TRIGGER_COUNT` to a request; returns
    /// their ids once every one has finished, and the runs per second from
    /// the first trigger to the last completion.
    fn batch(&mut self, job: &str, n: usize) -> (f64, Vec<String>) {
        let started = Instant::now();
        let mut ids = Vec::with_capacity(n);
        while ids.len() < n {
            let count = TRIGGER_COUNT.min(n - ids.len());
            let result = self.call("trigger", json!({"name": job, "count": count}));
            ids.extend(result["run_ids"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_owned()));
        }
        // A lone run's latency is read to the tenth of a millisecond; a
        // batch's waiting client looks every millisecond (a hundredth of a
        // batch), so that it does not take from the daemon it measures a
        // tenth to a fifth of a core (it did, looking every 100 µs).
        let poll = if n == 1 { Duration::from_micros(100) } else { Duration::from_millis(1) };
        self.wait(&ids, poll);
        (n as f64 / started.elapsed().as_secs_f64(), ids)
    }

    /// Waits until every run of `ids` has finished (each must succeed),
    /// looking each up by its id in turn, every `poll` until it has.
    fn wait(&self, ids: &[String], poll: Duration) {
        let started = Instant::now();
        let mut stmt = self.db.prepare_cached("SELECT status FROM runs WHERE id = ?1").unwrap();
        for id in ids {
            loop {
                let status: String = stmt.query_row([id], |r| r.get(0)).unwrap();
                if status == RunStatus::Succeeded.as_str() {
                    break;
                }
                assert!(matches!(status.as_str(), "pending" | "running"), "run {id} ended {status}");
                assert!(started.elapsed() < Duration::from_secs(600), "runs did not finish");
                std::thread::sleep(poll);
            }
        }
    }

    /// Each run's trigger→start and trigger→completion, in milliseconds
    /// (the run history's resolution), from its record.
    fn latencies(&self, ids: &[String]) -> (Vec<f64>, Vec<f64>) {
        let ms = |a: &str, b: &str| {
            let a = humantime::parse_rfc3339(a).unwrap();
            let b = humantime::parse_rfc3339(b).unwrap();
            b.duration_since(a).unwrap_or_default().as_secs_f64() * 1000.0
        };
        let mut start = Vec::new();
        let mut end = Vec::new();
        let mut stmt = self
            .db
            .prepare(
                "SELECT r.created_at, t.at, r.finished_at FROM runs r
                 JOIN run_transitions t ON t.run_id = r.id AND t.status = 'running' WHERE r.id = ?1",
            )
            .unwrap();
        for id in ids {
            let (created, running, finished): (String, String, String) =
                stmt.query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap();
            start.push(ms(&created, &running));
            end.push(ms(&created, &finished));
        }
        (start, end)
    }

    fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn median(values: &[f64]) -> f64 {
    percentile(values, 0.5)
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The median of the pair-wise ratios a/b, with min and max.
fn ratios(pairs: &[(f64, f64)]) -> (f64, f64, f64) {
    let ratios: Vec<f64> = pairs.iter().map(|(a, b)| a / b).collect();
    let (min, max) = ratios.iter().fold((f64::MAX, 0.0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    (median(&ratios), min, max)
}

fn hello_job(name: &str, bundle: &Path) -> String {
    format!(
        "[jobs.{name}]\nbundle = {:?}\ninput = '{{\"name\":\"bench\"}}'\nallow_overlap = true\n",
        bundle.to_str().unwrap()
    )
}

fn main() {
    let hello = guests::guest("hello");
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path(), "state", &hello_job("hello", &hello), "");
    std::thread::sleep(Duration::from_millis(500));
    let idle = daemon.rss_kib();

    println!("| benchmark | result | baseline | ratio |");
    println!("|---|---|---|---|");
    println!("| idle daemon, resident memory (no job running) | {:.1} MiB | | |", mib(idle));

    // The in-process baseline: the same node run by a pooled sandbox in
    // this process, one run after another, as fast as it goes.
    let pooled = Sandbox::new(EngineOptions {
        pooling: Some(PoolingOptions::new(4, Limits::DEFAULT_MEMORY_BYTES)),
        ..EngineOptions::default()
    })
    .unwrap();
    let program = pooled.load(&std::fs::read(&hello).unwrap(), "hello.wasm").unwrap();
    let request = RunRequest { input: r#"{"name":"bench"}"#.to_owned(), ..RunRequest::default() };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let in_process = |n: usize| {
        let started = Instant::now();
        for _ in 0..n {
            let report = runtime.block_on(pooled.run(&program, &request));
            assert_eq!(report.status, RunStatus::Succeeded);
        }
        n as f64 / started.elapsed().as_secs_f64()
    };

    // Warm the artifact cache, the pools and both sides' code paths.
    daemon.batch("hello", 200);
    in_process(200);

    let mut pairs = Vec::new();
    let (mut to_start, mut to_end) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (rate, ids) = daemon.batch("hello", BATCH);
        let baseline = in_process(BATCH);
        pairs.push((rate, baseline));
        let (start, end) = daemon.latencies(&ids);
        to_start.extend(start);
        to_end.extend(end);
    }
    let (ratio, min, max) = ratios(&pairs);
    println!(
        "| daemon trigger→completion, `hello` node job, {ROUNDS} batches of {BATCH} runs ({TRIGGER_COUNT} per `trigger` request, 4 run slots), every run recorded | {:.0} runs/s (median batch) | {:.0} runs/s (in-process pooled run of the same node, one after another, interleaved) | {ratio:.2}× (median of {ROUNDS} pair-wise ratios; min {min:.2}×, max {max:.2}×) |",
        median(&pairs.iter().map(|p| p.0).collect::<Vec<_>>()),
        median(&pairs.iter().map(|p| p.1).collect::<Vec<_>>()),
    );
    println!(
        "| the same runs' latency (from their records, 1 ms resolution; a batch queues behind its own runs) | trigger→start p50 {:.0} ms, p99 {:.0} ms; trigger→completion p50 {:.0} ms, p99 {:.0} ms | | |",
        percentile(&to_start, 0.5),
        percentile(&to_start, 0.99),
        percentile(&to_end, 0.5),
        percentile(&to_end, 0.99),
    );
    // Another build of wfrun (`WFRUN_BENCH_BASELINE_BIN`, e.g. the last
    // commit's), batches interleaved with this one's: what a change did.
    if let Some(baseline) = std::env::var_os("WFRUN_BENCH_BASELINE_BIN") {
        let mut other =
            Daemon::start_binary(Path::new(&baseline), dir.path(), "baseline", &hello_job("hello", &hello), "");
        other.batch("hello", 200);
        let mut versus = Vec::new();
        for _ in 0..ROUNDS {
            let (ours, _) = daemon.batch("hello", BATCH);
            let (theirs, _) = other.batch("hello", BATCH);
            versus.push((ours, theirs));
        }
        let (ratio, min, max) = ratios(&versus);
        println!(
            "| this build vs {} (daemon batches as above, interleaved) | {:.0} runs/s | {:.0} runs/s | {ratio:.2}× (min {min:.2}×, max {max:.2}×) |",
            Path::new(&baseline).display(),
            median(&versus.iter().map(|p| p.0).collect::<Vec<_>>()),
            median(&versus.iter().map(|p| p.1).collect::<Vec<_>>()),
        );
    }

    // One run at a time: the latency of a lone trigger.
    let mut lone = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        let (_, ids) = daemon.batch("hello", 1);
        lone.push(started.elapsed().as_secs_f64() * 1000.0);
        drop(ids);
    }
    println!(
        "| a lone trigger→completion over the socket (client-side, 200 one at a time) | p50 {:.2} ms, p99 {:.2} ms | | |",
        percentile(&lone, 0.5),
        percentile(&lone, 0.99)
    );

    // `wfrun exec` processes, four at a time, interleaved with daemon batches.
    let wfrun = env!("CARGO_BIN_EXE_wfrun");
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
        let mut children: Vec<Child> = Vec::new();
        for _ in 0..EXEC_BATCH {
            if children.len() == 4 {
                assert!(children.remove(0).wait().unwrap().success());
            }
            children.push(exec());
        }
        for mut child in children {
            assert!(child.wait().unwrap().success());
        }
        EXEC_BATCH as f64 / started.elapsed().as_secs_f64()
    };
    let mut exec_pairs = Vec::new();
    for _ in 0..5 {
        let (rate, _) = daemon.batch("hello", BATCH / 4);
        exec_pairs.push((rate, exec_batch()));
    }
    let (ratio, min, max) = ratios(&exec_pairs);
    println!(
        "| daemon vs `wfrun exec` processes (4 at a time, 5 batches of {EXEC_BATCH}, interleaved with daemon batches of {}) | {:.0} runs/s | {:.0} runs/s | {ratio:.1}× (min {min:.1}×, max {max:.1}×) |",
        BATCH / 4,
        median(&exec_pairs.iter().map(|p| p.0).collect::<Vec<_>>()),
        median(&exec_pairs.iter().map(|p| p.1).collect::<Vec<_>>()),
    );
    println!(
        "| daemon resident memory after {} runs | {:.1} MiB | {:.1} MiB idle | |",
        200 + ROUNDS * BATCH + 200 + 5 * BATCH / 4,
        mib(daemon.rss_kib()),
        mib(idle)
    );

    // The cost of reporting: a daemon with a `[report]` table commits each
    // run's record with its report, `synchronous = FULL` (an fsync a
    // group). Its endpoint is a closed loopback port, so the uploader only
    // backs off and the difference is the durable write.
    let mut reporting = Daemon::start(
        dir.path(),
        "reporting",
        &hello_job("hello", &hello),
        "[report]\nendpoint = \"http://127.0.0.1:9\"\noutbox_max_reports = 1000000\nbackoff_min = \"10s\"\nbackoff_max = \"60s\"",
    );
    reporting.batch("hello", 200);
    let mut report_pairs = Vec::new();
    for _ in 0..5 {
        let (with, _) = reporting.batch("hello", BATCH / 2);
        let (without, _) = daemon.batch("hello", BATCH / 2);
        report_pairs.push((with, without));
    }
    drop(reporting);
    let (ratio, min, max) = ratios(&report_pairs);
    println!(
        "| the same with `[report]`: records and reports committed with synchronous = FULL | {:.0} runs/s (median batch) | {:.0} runs/s (no `[report]`, interleaved) | {ratio:.2}× (min {min:.2}×, max {max:.2}×) |",
        median(&report_pairs.iter().map(|p| p.0).collect::<Vec<_>>()),
        median(&report_pairs.iter().map(|p| p.1).collect::<Vec<_>>()),
    );
    drop(daemon);

    // The soak: a fresh daemon, N runs; memory after the first 1,000 and
    // at the end, each read as the last run is seen recorded and again at
    // rest, half a second later (once the run-end writer has found the
    // daemon idle and trimmed the heap).
    let soak: usize = std::env::var("WFRUN_BENCH_SOAK").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    if soak >= 2000 {
        let mut soaked = Daemon::start(dir.path(), "soak", &hello_job("hello", &hello), "");
        std::thread::sleep(Duration::from_millis(500));
        let idle = soaked.rss_kib();
        let at_rest = |daemon: &Daemon| {
            std::thread::sleep(Duration::from_millis(500));
            daemon.rss_kib()
        };
        soaked.batch("hello", 1000);
        let early = soaked.rss_kib();
        let early_rest = at_rest(&soaked);
        let started = Instant::now();
        let mut done = 1000;
        // Batches of 1,000 throughout, so that the queue's high-water mark
        // is the same early and late: growth would be a leak.
        while done < soak {
            let n = 1_000.min(soak - done);
            soaked.batch("hello", n);
            done += n;
        }
        let rate = (soak - 1000) as f64 / started.elapsed().as_secs_f64();
        let late = soaked.rss_kib();
        let late_rest = at_rest(&soaked);
        println!(
            "| soak: {soak} runs through one daemon ({rate:.0} runs/s), resident memory at rest (0.5 s after the last run) | {:.1} MiB after them | {:.1} MiB after the first 1,000 ({:.1} MiB idle) | {:.2}× |",
            mib(late_rest),
            mib(early_rest),
            mib(idle),
            late_rest as f64 / early_rest as f64
        );
        println!(
            "| … read as the last run is seen recorded | {:.1} MiB after them | {:.1} MiB after the first 1,000 | {:.2}× |",
            mib(late),
            mib(early),
            late as f64 / early as f64
        );
        let db = std::fs::metadata(soaked.state.join("wfrun.db")).map(|m| m.len()).unwrap_or(0);
        println!("| soak: the run database after it | {:.1} MiB | | |", db as f64 / 1048576.0);
    }

    // Python and JavaScript nodes in the daemon, one trigger at a time,
    // after the first (which loads the artifact), against the Rust node.
    if std::env::var("WFRUN_BENCH_POLYGLOT").as_deref() != Ok("0") {
        let python = guests::polyglot("python-hello");
        let js = guests::polyglot("js-hello");
        let jobs = hello_job("rust", &hello) + &hello_job("python", &python) + &hello_job("js", &js);
        let mut polyglot = Daemon::start(dir.path(), "polyglot", &jobs, "");
        let mut times: Vec<(&str, Vec<f64>)> = vec![("rust", Vec::new()), ("python", Vec::new()), ("js", Vec::new())];
        for (job, _) in &times {
            polyglot.batch(job, 1);
        }
        for _ in 0..100 {
            for (job, samples) in &mut times {
                let started = Instant::now();
                polyglot.batch(job, 1);
                samples.push(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
        let rust = median(&times[0].1);
        for (job, samples) in &times[1..] {
            let pairs: Vec<(f64, f64)> = samples.iter().zip(&times[0].1).map(|(a, b)| (*a, *b)).collect();
            let (ratio, min, max) = ratios(&pairs);
            println!(
                "| daemon trigger→completion, `{job}-hello` node, one at a time, after the first (client-side) | p50 {:.2} ms, p99 {:.2} ms | p50 {rust:.2} ms (Rust `hello`, interleaved) | {ratio:.1}× (min {min:.1}×, max {max:.1}×) |",
                median(samples),
                percentile(samples, 0.99)
            );
        }
        println!("| the polyglot daemon's resident memory after them | {:.1} MiB | | |", mib(polyglot.rss_kib()));
    }
}
