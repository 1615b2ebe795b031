//! The per-run store data and the host side of the guest's imports.
//!
//! [`GuestState`] is what each `Store` carries: the WASI context (with only the
//! granted files and environment), the resource table, the
//! [`StoreLimiter`](super::limits::StoreLimiter), and the bounded log of
//! `log` import calls. It implements the `Host` traits of the `wfrun:node`
//! imports from [`NodeServices`]: configuration, granted secrets and a
//! [`StateAccess`] backend, each `unavailable` when not given. Every call is
//! recorded in the run's trace (keys and outcomes, never values).

use super::capture::Echoer;
use super::limits::{LimitExceeded, StoreLimiter};
use crate::egress::client::EgressHooks;
use crate::outcome::{HostCall, LogLine, Metric, MetricKind};
use std::collections::BTreeMap;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};
use wfrun_host_api::{config, log, metrics, state};

/// What each log line costs against the log cap on top of its message, so
/// that a flood of empty lines is bounded too.
pub const LOG_LINE_OVERHEAD: u64 = 64;

/// Lines written through the `log` import, capped in bytes.
#[derive(Debug)]
pub struct LogSink {
    lines: Vec<LogLine>,
    bytes: u64,
    limit: u64,
    echo: Option<Echoer>,
}

impl LogSink {
    /// A sink holding at most `limit` bytes of messages (each line also
    /// costs [`LOG_LINE_OVERHEAD`]), echoed through `echo` if given.
    pub fn new(limit: u64, echo: Option<Echoer>) -> Self {
        LogSink { lines: Vec::new(), bytes: 0, limit, echo }
    }

    async fn push(&mut self, level: &'static str, message: String) -> Result<(), LimitExceeded> {
        self.bytes = self.bytes.saturating_add(message.len() as u64 + LOG_LINE_OVERHEAD);
        if self.bytes > self.limit {
            return Err(LimitExceeded::Log { limit: self.limit });
        }
        if let Some(echo) = &self.echo {
            echo.send(format!("[{level}] {message}\n").into()).await;
        }
        self.lines.push(LogLine { level, message });
        Ok(())
    }

    /// The lines logged so far.
    pub fn into_lines(self) -> Vec<LogLine> {
        self.lines
    }
}

/// The most metric names one run (one node attempt) may record.
pub const MAX_METRICS: usize = 64;
/// The longest metric name.
pub const MAX_METRIC_NAME: usize = 64;

/// What the guest recorded through the `metrics` import, bounded in names.
/// Calls are not traced: a counter may be bumped in a hot loop.
#[derive(Debug, Default)]
pub struct MetricSink {
    metrics: BTreeMap<String, Metric>,
}

impl MetricSink {
    fn record(&mut self, name: String, kind: MetricKind, value: f64) -> Result<(), metrics::MetricError> {
        let valid_name = !name.is_empty()
            && name.len() <= MAX_METRIC_NAME
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !valid_name {
            return Err(metrics::MetricError::InvalidName(format!(
                "1 to {MAX_METRIC_NAME} of a-z A-Z 0-9 _ . - (got {} bytes)",
                name.len()
            )));
        }
        if !value.is_finite() || (kind == MetricKind::Counter && value < 0.0) {
            return Err(metrics::MetricError::InvalidValue(format!("{value} for {name}")));
        }
        let known = self.metrics.len();
        match self.metrics.get_mut(&name) {
            Some(metric) if metric.kind != kind => Err(metrics::MetricError::KindMismatch(format!(
                "{name} is a {}, not a {}",
                metric.kind.as_str(),
                kind.as_str()
            ))),
            Some(metric) => {
                let next = if kind == MetricKind::Counter { metric.value + value } else { value };
                if !next.is_finite() {
                    return Err(metrics::MetricError::InvalidValue(format!("{name} would overflow")));
                }
                metric.value = next;
                Ok(())
            }
            None if known >= MAX_METRICS => {
                Err(metrics::MetricError::TooMany(format!("at most {MAX_METRICS} metrics per run")))
            }
            None => {
                self.metrics.insert(name, Metric { kind, value });
                Ok(())
            }
        }
    }

    /// What was recorded.
    pub fn into_metrics(self) -> BTreeMap<String, Metric> {
        self.metrics
    }
}

/// Durable state as a node sees it. The workflow executor implements it over
/// SQLite with a per-run overlay; the sandbox only calls it.
///
/// The outer `Result` is a host failure (a broken database) and traps the
/// guest; the inner one is the guest-visible answer.
pub trait StateAccess: Send + Sync {
    /// The value under `key`.
    fn get(&self, key: &str) -> wasmtime::Result<Result<Option<Vec<u8>>, state::StateError>>;
    /// Stores `value` under `key`, within the quota.
    fn set(&self, key: &str, value: Vec<u8>) -> wasmtime::Result<Result<(), state::StateError>>;
    /// Removes `key`.
    fn delete(&self, key: &str) -> wasmtime::Result<Result<(), state::StateError>>;
    /// Keys starting with `prefix`, in byte order.
    fn list_keys(&self, prefix: &str) -> wasmtime::Result<Result<Vec<String>, state::StateError>>;
}

/// What the `state` and `config` imports answer from. `None` means
/// `unavailable`.
#[derive(Clone, Default)]
pub struct NodeServices {
    /// Configuration values.
    pub config: Option<Arc<BTreeMap<String, String>>>,
    /// The secrets this node is granted: name → value, `None` if the operator
    /// did not supply it. A name not in the map is `not-granted`.
    pub secrets: Option<Arc<BTreeMap<String, Option<String>>>>,
    /// Durable state.
    pub state: Option<Arc<dyn StateAccess>>,
}

impl std::fmt::Debug for NodeServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeServices")
            .field("config", &self.config)
            .field("secrets", &self.secrets.as_ref().map(|s| s.keys().cloned().collect::<Vec<_>>()))
            .field("state", &self.state.is_some())
            .finish()
    }
}

/// Host calls kept per run; later ones are counted in one `Dropped` entry.
const MAX_TRACE: usize = 4096;

/// The ordered host calls of one run, bounded.
#[derive(Debug, Default)]
pub struct Trace {
    calls: Vec<HostCall>,
    dropped: u64,
}

impl Trace {
    fn push(&mut self, call: HostCall) {
        if let (HostCall::Log { count }, Some(HostCall::Log { count: last })) = (&call, self.calls.last_mut()) {
            *last += count;
        } else if self.calls.len() < MAX_TRACE {
            self.calls.push(call);
        } else {
            self.dropped += 1;
        }
    }

    /// The calls in order, with a final `Dropped` entry if any were.
    pub fn into_calls(mut self) -> Vec<HostCall> {
        if self.dropped > 0 {
            self.calls.push(HostCall::Dropped { count: self.dropped });
        }
        self.calls
    }
}

/// The data of one run's `Store`.
pub struct GuestState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limiter: StoreLimiter,
    pub(super) logs: LogSink,
    pub(super) services: NodeServices,
    pub(super) trace: Trace,
    pub(super) metrics: MetricSink,
    pub(super) http: WasiHttpCtx,
    pub(super) egress: EgressHooks,
    /// Whether the guest has called any import (WASI, `wasi:http` or
    /// `wfrun:node`): every host call reaches the state through
    /// [`GuestState::host`] or one of the views below, which set it. An
    /// instance made ahead of its run is kept only if its instantiation
    /// left this unset (`spare`).
    pub(super) touched: bool,
}

impl GuestState {
    /// The state of a store under `limits`, before its guest has run: an
    /// empty resource table and trace, no metrics, no host call yet.
    pub(super) fn new(
        wasi: WasiCtx,
        limits: &super::Limits,
        logs: LogSink,
        services: NodeServices,
        egress: EgressHooks,
    ) -> Self {
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.resources);
        GuestState {
            wasi,
            table,
            limiter: StoreLimiter::new(limits),
            logs,
            services,
            trace: Trace::default(),
            metrics: MetricSink::default(),
            http: WasiHttpCtx::new(),
            egress,
            touched: false,
        }
    }

    /// The state as a `wfrun:node` import sees it.
    pub(super) fn host(&mut self) -> &mut Self {
        self.touched = true;
        self
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.touched = true;
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        self.touched = true;
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.egress }
    }
}

impl log::Host for GuestState {
    async fn write(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            log::Level::Trace => "trace",
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        self.trace.push(HostCall::Log { count: 1 });
        Ok(self.logs.push(level, message).await?)
    }
}

impl state::Host for GuestState {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, state::StateError>> {
        let Some(state) = &self.services.state else { return Ok(Err(state::StateError::Unavailable)) };
        let result = state.get(&key)?;
        let found = matches!(result, Ok(Some(_)));
        self.trace.push(HostCall::StateGet { key, found });
        Ok(result)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), state::StateError>> {
        let Some(state) = &self.services.state else { return Ok(Err(state::StateError::Unavailable)) };
        let bytes = value.len() as u64;
        let result = state.set(&key, value)?;
        self.trace.push(HostCall::StateSet { key, bytes, ok: result.is_ok() });
        Ok(result)
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), state::StateError>> {
        let Some(state) = &self.services.state else { return Ok(Err(state::StateError::Unavailable)) };
        let result = state.delete(&key)?;
        self.trace.push(HostCall::StateDelete { key });
        Ok(result)
    }

    fn list_keys(&mut self, prefix: String) -> wasmtime::Result<Result<Vec<String>, state::StateError>> {
        let Some(state) = &self.services.state else { return Ok(Err(state::StateError::Unavailable)) };
        let result = state.list_keys(&prefix)?;
        let count = result.as_ref().map(|keys| keys.len() as u64).unwrap_or(0);
        self.trace.push(HostCall::StateListKeys { prefix, count });
        Ok(result)
    }
}

impl metrics::Host for GuestState {
    fn gauge(&mut self, name: String, value: f64) -> wasmtime::Result<Result<(), metrics::MetricError>> {
        Ok(self.metrics.record(name, MetricKind::Gauge, value))
    }

    fn counter(&mut self, name: String, delta: f64) -> wasmtime::Result<Result<(), metrics::MetricError>> {
        Ok(self.metrics.record(name, MetricKind::Counter, delta))
    }
}

impl config::Host for GuestState {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, config::ConfigError>> {
        let Some(config) = &self.services.config else { return Ok(Err(config::ConfigError::Unavailable)) };
        let value = config.get(&key).cloned();
        self.trace.push(HostCall::ConfigGet { key, found: value.is_some() });
        Ok(Ok(value))
    }

    fn get_secret(&mut self, name: String) -> wasmtime::Result<Result<Option<String>, config::ConfigError>> {
        let Some(secrets) = &self.services.secrets else { return Ok(Err(config::ConfigError::Unavailable)) };
        let result = match secrets.get(&name) {
            Some(value) => Ok(value.clone()),
            None => Err(config::ConfigError::NotGranted(name.clone())),
        };
        let found = matches!(result, Ok(Some(_)));
        self.trace.push(HostCall::SecretGet { name, granted: result.is_ok(), found });
        Ok(result)
    }
}
