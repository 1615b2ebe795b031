//! Hostile guests: each limit ends the run with its own code, and the host
//! carries on as if nothing happened.

use crate::guests::guest;
use crate::sandbox::{program, run_node, sandbox, wat_program};
use serde_json::json;
use std::time::{Duration, Instant};
use wfrun_runtime::outcome::{ErrorCode, RunReport, RunStatus};
use wfrun_runtime::sandbox::{EngineOptions, Limits, RunRequest, Sandbox};

fn small() -> Limits {
    Limits {
        fuel: 2_000_000_000,
        memory_bytes: 32 * 1024 * 1024,
        timeout: Duration::from_secs(10),
        output_bytes: 64 * 1024,
        stdio_bytes: 64 * 1024,
        log_bytes: 64 * 1024,
        ..Limits::default()
    }
}

fn assert_failed(report: &RunReport, code: ErrorCode) {
    assert_eq!(report.status, RunStatus::Failed, "{report:?}");
    assert_eq!(report.error_code, Some(code), "{:?}", report.error_message);
}

async fn run_wat_job(name: &str, limits: Limits) -> RunReport {
    let program = wat_program(name).unwrap();
    sandbox().run(&program, &RunRequest { limits, ..RunRequest::default() }).await
}

#[tokio::test]
async fn endless_loop_is_stopped_by_fuel() {
    let report = run_node("hostile", json!({"mode": "loop"}), small()).await;
    assert_failed(&report, ErrorCode::FuelExhausted);
    assert_eq!(report.fuel_consumed, small().fuel);
}

#[tokio::test]
async fn endless_loop_is_stopped_by_the_timeout_without_fuel_metering() {
    let sandbox = Sandbox::new(EngineOptions { fuel_metering: false, ..EngineOptions::default() }).unwrap();
    let program = sandbox.load(&std::fs::read(guest("hostile")).unwrap(), "hostile.wasm").unwrap();
    let limits = Limits { timeout: Duration::from_millis(300), ..small() };
    let request = RunRequest { input: json!({"mode": "loop"}).to_string(), limits, ..RunRequest::default() };
    let started = Instant::now();
    let report = sandbox.run(&program, &request).await;
    assert_failed(&report, ErrorCode::Timeout);
    // Generous: this checks that the deadline fires at all, not how fast.
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn endless_loop_is_stopped_by_the_timeout_before_its_fuel_runs_out() {
    let limits = Limits { fuel: u64::MAX, timeout: Duration::from_millis(300), ..small() };
    let report = run_wat_job("loop-job", limits).await;
    assert_failed(&report, ErrorCode::Timeout);
}

#[tokio::test]
async fn unbounded_memory_growth_hits_the_memory_limit() {
    let report = run_node("hostile", json!({"mode": "grow"}), small()).await;
    assert_failed(&report, ErrorCode::MemoryLimit);
    assert!(report.peak_memory_bytes <= small().memory_bytes, "{}", report.peak_memory_bytes);
    assert!(report.peak_memory_bytes > small().memory_bytes / 2);

    let report = run_wat_job("grow-job", small()).await;
    assert_failed(&report, ErrorCode::MemoryLimit);
}

#[tokio::test]
async fn oversized_memories_and_tables_are_refused_at_instantiation() {
    assert_failed(&run_wat_job("memory-bomb-job", small()).await, ErrorCode::MemoryLimit);
    assert_failed(&run_wat_job("table-bomb-job", small()).await, ErrorCode::MemoryLimit);
    // Each table fits the element limit on its own; together they do not.
    assert_failed(&run_wat_job("table-total-bomb-job", small()).await, ErrorCode::MemoryLimit);
    let roomy = Limits { table_elements: 200_000, ..small() };
    assert_eq!(run_wat_job("table-total-bomb-job", roomy).await.status, RunStatus::Succeeded);
}

/// Guards `limits::count_limit`, the one place that reads wasmtime's untyped
/// count errors: each count, past its limit, is `memory_limit`, and the same
/// component runs when the limit is raised.
#[tokio::test]
async fn count_limits_are_classified() {
    let roomy = Limits { instances: 300, tables: 300, memories: 300, ..small() };
    for (job, limits) in [
        ("instance-bomb-job", small()),
        ("table-count-bomb-job", Limits { instances: 300, ..small() }),
        ("memory-count-bomb-job", small()),
    ] {
        let report = run_wat_job(job, limits).await;
        assert_failed(&report, ErrorCode::MemoryLimit);
        assert_eq!(run_wat_job(job, roomy.clone()).await.status, RunStatus::Succeeded, "{job}");
    }
}

#[tokio::test]
async fn unbounded_recursion_is_a_stack_overflow() {
    let report = run_node("hostile", json!({"mode": "recurse"}), small()).await;
    assert_failed(&report, ErrorCode::StackOverflow);
}

#[tokio::test]
async fn oversized_output_hits_the_output_limit() {
    let fits = run_node("hostile", json!({"mode": "output", "n": 1000}), small()).await;
    assert_eq!(fits.status, RunStatus::Succeeded);
    let report = run_node("hostile", json!({"mode": "output", "n": 100_000}), small()).await;
    assert_failed(&report, ErrorCode::OutputLimit);
    assert!(report.output.is_none());
}

#[tokio::test]
async fn stdout_and_log_floods_hit_the_output_limit() {
    let report = run_node("hostile", json!({"mode": "stdout"}), small()).await;
    assert_failed(&report, ErrorCode::OutputLimit);
    assert!(report.stdout.len() as u64 <= small().stdio_bytes);

    let report = run_node("hostile", json!({"mode": "log"}), small()).await;
    assert_failed(&report, ErrorCode::OutputLimit);

    // Empty lines cost their bookkeeping, so they are bounded too.
    let report = run_node("hostile", json!({"mode": "log-empty"}), small()).await;
    assert_failed(&report, ErrorCode::OutputLimit);
    assert!(report.logs.len() < 2000, "{} lines kept", report.logs.len());

    let request = RunRequest { args: vec!["stderr".into()], limits: small(), ..RunRequest::default() };
    let report = sandbox().run(&program(&guest("hostile-job")), &request).await;
    assert_failed(&report, ErrorCode::OutputLimit);
    assert!(report.stderr.len() as u64 <= small().stdio_bytes);
}

#[tokio::test]
async fn explicit_traps_and_panics_are_traps() {
    assert_failed(&run_node("hostile", json!({"mode": "trap"}), small()).await, ErrorCode::Trap);
    let panic = run_node("hostile", json!({"mode": "panic"}), small()).await;
    assert_failed(&panic, ErrorCode::Trap);
    assert!(panic.stderr.contains("hostile guest panics on purpose"), "{}", panic.stderr);
    assert_failed(&run_wat_job("unreachable-job", small()).await, ErrorCode::Trap);
}

#[tokio::test]
async fn a_guest_parked_in_a_host_call_is_stopped_by_the_timeout() {
    let limits = Limits { timeout: Duration::from_millis(300), ..small() };
    let started = Instant::now();
    let report = run_node("hostile", json!({"mode": "sleep"}), limits).await;
    assert_failed(&report, ErrorCode::Timeout);
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_node_that_calls_exit_is_a_trap_not_a_success() {
    let report = run_node("hostile", json!({"mode": "exit"}), small()).await;
    assert_failed(&report, ErrorCode::Trap);
    assert!(report.output.is_none());
}

#[tokio::test]
async fn files_env_and_sockets_are_denied_without_a_grant() {
    // A real listener on loopback: the guest must not reach it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();

    let report = run_node("hostile", json!({"mode": "ambient", "n": port}), small()).await;
    assert_eq!(report.status, RunStatus::Succeeded, "{report:?}");
    let seen: serde_json::Value = serde_json::from_str(report.output.unwrap().get()).unwrap();
    for attempt in ["read_root", "read_passwd", "write_tmp", "tcp_connect", "udp_bind", "dns"] {
        assert!(seen[attempt].as_str().unwrap().starts_with("denied"), "{attempt}: {}", seen[attempt]);
    }
    assert_eq!(seen["env_count"], 0);
    assert_eq!(
        listener.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "the guest connected to the host's listener"
    );
}

/// Every hostile guest in turn on one sandbox, then an ordinary run: a
/// hostile guest never takes the host down or leaves it unusable.
#[tokio::test]
async fn one_sandbox_survives_every_hostile_guest_in_turn() {
    let modes = [
        ("loop", ErrorCode::FuelExhausted),
        ("grow", ErrorCode::MemoryLimit),
        ("recurse", ErrorCode::StackOverflow),
        ("stdout", ErrorCode::OutputLimit),
        ("log", ErrorCode::OutputLimit),
        ("trap", ErrorCode::Trap),
        ("panic", ErrorCode::Trap),
    ];
    for (mode, code) in modes {
        let report = run_node("hostile", json!({"mode": mode}), small()).await;
        assert_failed(&report, code);
    }
    for (job, code) in [
        ("loop-job", ErrorCode::FuelExhausted),
        ("memory-bomb-job", ErrorCode::MemoryLimit),
        ("unreachable-job", ErrorCode::Trap),
    ] {
        assert_failed(&run_wat_job(job, small()).await, code);
    }
    let report = run_node("hello", json!({"name": "after the storm"}), small()).await;
    assert_eq!(report.output.unwrap().get(), r#"{"greeting":"Hello, after the storm!"}"#);
}

/// A pooled slot is reused run after run (its pages kept resident and reset
/// in place): no run may see what the one before it left in memory, in its
/// data image or in pages it grew.
#[tokio::test]
async fn a_pooled_run_never_sees_what_the_run_before_it_left_in_memory() {
    use wfrun_runtime::sandbox::PoolingOptions;
    // One slot, so every run takes the memory the last one used.
    let pooled =
        Sandbox::new(EngineOptions { pooling: Some(PoolingOptions::new(1, 64 << 20)), ..EngineOptions::default() })
            .unwrap();
    let hostile = pooled.load(&std::fs::read(guest("hostile")).unwrap(), "hostile").unwrap();
    // 4 MiB of grown pages: past what is kept resident, and within it.
    for (run, pages) in [(1, 64), (2, 64), (3, 8), (4, 64)] {
        let request = RunRequest { input: json!({"mode": "residue", "n": pages}).to_string(), ..RunRequest::default() };
        let report = pooled.run(&hostile, &request).await;
        assert_eq!(report.status, RunStatus::Succeeded, "run {run}: {report:?}");
        let output: serde_json::Value = serde_json::from_str(report.output.unwrap().get()).unwrap();
        assert_eq!(output, json!({"mark": 0, "dirty": 0}), "run {run} saw an earlier run's memory");
    }
}

/// The pooling allocator (for long-lived hosts) changes where memories,
/// tables and instances come from, not what a run may have: every hostile
/// guest still ends with the limiter's own code, and the pool's slots come
/// back for the next run.
#[tokio::test]
async fn the_pooling_allocator_keeps_every_limit_and_code() {
    use wfrun_runtime::sandbox::PoolingOptions;
    let pooled = Sandbox::new(EngineOptions {
        pooling: Some(PoolingOptions::new(2, small().memory_bytes)),
        ..EngineOptions::default()
    })
    .unwrap();
    let node = |name: &str| pooled.load(&std::fs::read(guest(name)).unwrap(), name).unwrap();
    let hostile = node("hostile");
    for (mode, code) in [
        ("loop", ErrorCode::FuelExhausted),
        ("grow", ErrorCode::MemoryLimit),
        ("recurse", ErrorCode::StackOverflow),
        ("log", ErrorCode::OutputLimit),
        ("panic", ErrorCode::Trap),
    ] {
        let request = RunRequest { input: json!({"mode": mode}).to_string(), limits: small(), ..RunRequest::default() };
        assert_failed(&pooled.run(&hostile, &request).await, code);
    }
    // What is statically larger than the pools (a memory or table whose
    // declared minimum is larger than a slot, more core instances than a
    // run may have) can never run under these ceilings: the pool refuses it
    // when it is loaded, before any run, naming the size.
    for job in ["memory-bomb-job", "table-bomb-job", "instance-bomb-job", "memory-count-bomb-job"] {
        let error = pooled.load(&crate::guests::wat(job), &format!("{job}.wat")).unwrap_err();
        let error = error.to_string();
        assert!(
            error.contains("exceeds the limit") || error.contains("exceeds the configured maximum"),
            "{job}: {error}"
        );
    }
    for (job, code) in [
        ("table-total-bomb-job", ErrorCode::MemoryLimit),
        ("grow-job", ErrorCode::MemoryLimit),
        ("unreachable-job", ErrorCode::Trap),
    ] {
        let program = match pooled.load(&crate::guests::wat(job), &format!("{job}.wat")) {
            Ok(program) => program,
            Err(e) => panic!("{job} does not load on the pooled sandbox: {e}"),
        };
        let report = pooled.run(&program, &RunRequest { limits: small(), ..RunRequest::default() }).await;
        assert_failed(&report, code);
    }
    // Many more runs than slots: each run gives its slots back.
    let hello = node("hello");
    for i in 0..20 {
        let request = RunRequest {
            input: json!({"name": format!("run {i}")}).to_string(),
            limits: small(),
            ..RunRequest::default()
        };
        let report = pooled.run(&hello, &request).await;
        assert_eq!(report.status, RunStatus::Succeeded, "run {i}: {:?}", report.error_message);
    }
}
