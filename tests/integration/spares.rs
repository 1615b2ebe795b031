//! Spare instances: a pooled sandbox makes a costly program's next instance
//! ahead of its run (`runtime/src/sandbox/spare.rs`). These tests set the
//! threshold to zero, so that the small Rust guests get spares too.

use crate::guests::{guest, wat};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wfrun_runtime::outcome::{ErrorCode, RunStatus};
use wfrun_runtime::sandbox::{
    DirGrant, EngineOptions, Grants, Limits, NodeServices, PoolingOptions, Program, RunRequest, Sandbox,
};

/// A pooled sandbox for `concurrent_runs` runs that gives every program a
/// spare.
fn spared(concurrent_runs: u32) -> Sandbox {
    spared_with(PoolingOptions::new(concurrent_runs, 64 << 20))
}

fn spared_with(pooling: PoolingOptions) -> Sandbox {
    let pooling = PoolingOptions { spare_threshold: Duration::ZERO, ..pooling };
    Sandbox::new(EngineOptions { pooling: Some(pooling), ..EngineOptions::default() }).unwrap()
}

fn load(sandbox: &Sandbox, name: &str) -> Program {
    sandbox.load(&std::fs::read(guest(name)).unwrap(), name).unwrap()
}

/// Whether `program`'s spare is ready within `wait`.
async fn spare_within(program: &Program, wait: Duration) -> bool {
    let started = Instant::now();
    while !program.spare_ready() {
        if started.elapsed() > wait {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

fn output(report: &wfrun_runtime::outcome::RunReport) -> Value {
    assert_eq!(report.status, RunStatus::Succeeded, "{report:?}");
    serde_json::from_str(report.output.as_ref().unwrap().get()).unwrap()
}

/// An instance made ahead serves exactly one run: no run sees what the one
/// before it left in its statics or in the pages it grew, spare or not.
#[tokio::test]
async fn a_spare_serves_one_run_and_shows_it_nothing_an_earlier_run_left() {
    // One run slot: every run reuses the pool slots the last one gave back.
    let sandbox = spared(1);
    let hostile = load(&sandbox, "hostile");
    let request = RunRequest { input: json!({"mode": "residue", "n": 8}).to_string(), ..RunRequest::default() };
    for run in 1..=4u64 {
        if run > 1 {
            assert!(spare_within(&hostile, Duration::from_secs(10)).await, "no spare after run {}", run - 1);
        }
        let report = sandbox.run(&hostile, &request).await;
        assert_eq!(output(&report), json!({"mark": 0, "dirty": 0}), "run {run} saw an earlier run's memory");
        assert_eq!(hostile.spares_taken(), run - 1, "run {run}");
    }
}

/// A run served by a spare sees its own directories, environment and
/// secrets, which the spare was made without: the same as an inline run.
#[tokio::test]
async fn a_run_on_a_spare_sees_its_own_grants_and_services() {
    let sandbox = spared(2);
    let hostile = load(&sandbox, "hostile");
    let request = |dir: &std::path::Path, tag: &str| RunRequest {
        input: json!({"mode": "files"}).to_string(),
        grants: Grants {
            dirs: vec![DirGrant { host: dir.to_path_buf(), guest: "/data".into(), writable: true }],
            env: vec![("WFRUN_TEST".into(), tag.into())],
            ..Grants::default()
        },
        ..RunRequest::default()
    };
    let mut seen = Vec::new();
    for tag in ["first", "second", "third"] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("in.txt"), tag).unwrap();
        let report = sandbox.run(&hostile, &request(dir.path(), tag)).await;
        let output = output(&report);
        assert_eq!(output["read"], json!(tag), "{output}");
        assert_eq!(output["env"], json!(tag), "{output}");
        assert_eq!(output["write"], json!("allowed"), "{output}");
        assert_eq!(std::fs::read_to_string(dir.path().join("out.txt")).unwrap(), "written by guest");
        seen.push(hostile.spares_taken());
        assert!(spare_within(&hostile, Duration::from_secs(10)).await, "no spare after the {tag} run");
    }
    assert_eq!(seen, [0, 1, 2], "the second and third runs were to be served by spares");

    for token in ["s1", "s2"] {
        let services = NodeServices {
            secrets: Some(Arc::new(BTreeMap::from([("TOKEN".to_owned(), Some(token.to_owned()))]))),
            ..NodeServices::default()
        };
        let request = RunRequest { input: json!({"mode": "secret"}).to_string(), services, ..RunRequest::default() };
        let taken = hostile.spares_taken();
        let report = sandbox.run(&hostile, &request).await;
        assert_eq!(output(&report)["secret"], json!(format!("Ok(Some({token:?}))")));
        assert_eq!(hostile.spares_taken(), taken + 1);
        assert!(spare_within(&hostile, Duration::from_secs(10)).await);
    }
}

/// A spare is made under the limits of the run before it; a run with other
/// limits instantiates its own, and its fuel is its own.
#[tokio::test]
async fn a_spare_made_under_other_limits_is_not_used() {
    let sandbox = spared(2);
    let hostile = load(&sandbox, "hostile");
    let ok = RunRequest { input: json!({"mode": "ok"}).to_string(), ..RunRequest::default() };
    output(&sandbox.run(&hostile, &ok).await);
    assert!(spare_within(&hostile, Duration::from_secs(10)).await);
    let small = Limits { fuel: 50_000_000, ..Limits::default() };
    let looping =
        RunRequest { input: json!({"mode": "loop"}).to_string(), limits: small.clone(), ..RunRequest::default() };
    let report = sandbox.run(&hostile, &looping).await;
    assert_eq!(report.error_code, Some(ErrorCode::FuelExhausted), "{report:?}");
    assert_eq!(report.fuel_consumed, small.fuel);
    assert_eq!(hostile.spares_taken(), 0);
    // The next spare is made under the limits of the run just ended.
    assert!(spare_within(&hostile, Duration::from_secs(10)).await);
    let report = sandbox.run(&hostile, &looping).await;
    assert_eq!(report.error_code, Some(ErrorCode::FuelExhausted), "{report:?}");
    assert_eq!(report.fuel_consumed, small.fuel);
    assert_eq!(hostile.spares_taken(), 1);
}

/// A program whose instantiation calls an import (here the clock, from a
/// core module's start function) is always instantiated with its run's
/// context, never ahead; one that calls none gets a spare.
#[tokio::test]
async fn a_program_whose_instantiation_calls_the_host_gets_no_spare() {
    let sandbox = spared(2);
    let touchy = sandbox.load(&wat("clock-at-start-job"), "clock-at-start-job").unwrap();
    let quiet = sandbox.load(&wat("noop-job"), "noop-job").unwrap();
    for _ in 0..3 {
        for program in [&touchy, &quiet] {
            let report = sandbox.run(program, &RunRequest::default()).await;
            assert_eq!(report.status, RunStatus::Succeeded, "{report:?}");
        }
        assert!(spare_within(&quiet, Duration::from_secs(10)).await, "the control got no spare");
        assert!(!spare_within(&touchy, Duration::from_millis(200)).await, "a spare of a program that calls the host");
    }
    assert_eq!(touchy.spares_taken(), 0);
    assert_eq!(quiet.spares_taken(), 2);
}

/// A run on a spare has its whole timeout from when it takes the spare,
/// however long the spare waited for it.
#[tokio::test]
async fn a_spare_that_waited_longer_than_the_timeout_still_runs() {
    let sandbox = spared(1);
    let hostile = load(&sandbox, "hostile");
    let limits = Limits { timeout: Duration::from_millis(300), ..Limits::default() };
    let request = RunRequest { input: json!({"mode": "ok"}).to_string(), limits, ..RunRequest::default() };
    output(&sandbox.run(&hostile, &request).await);
    assert!(spare_within(&hostile, Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(output(&sandbox.run(&hostile, &request).await), json!({"ok": true}));
    assert_eq!(hostile.spares_taken(), 1);
}

/// Runs beyond the pool's slots wait for one (a store given back off the
/// run's path still holds its slot until it is gone); none is refused.
/// One spare, so that the pool has a single slot to spare.
#[tokio::test]
async fn runs_beyond_the_pools_slots_wait_for_one() {
    let sandbox = Arc::new(spared_with(PoolingOptions { spares: 1, ..PoolingOptions::new(2, 64 << 20) }));
    let hostile = load(&sandbox, "hostile");
    let mut runs = tokio::task::JoinSet::new();
    for _ in 0..24 {
        let (sandbox, hostile) = (sandbox.clone(), hostile.clone());
        runs.spawn(async move {
            let request = RunRequest { input: json!({"mode": "nap", "n": 20}).to_string(), ..RunRequest::default() };
            sandbox.run(&hostile, &request).await
        });
    }
    while let Some(report) = runs.join_next().await {
        assert_eq!(output(&report.unwrap()), json!({"napped_ms": 20}));
    }
}
