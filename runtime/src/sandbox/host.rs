//! The per-run store data and the host side of the guest's imports.
//!
//! [`RunState`] is what each `Store` carries: the WASI context (with only the
//! granted files and environment), the resource table, the
//! [`StoreLimiter`](super::limits::StoreLimiter), and the bounded log of
//! `log` import calls. It implements the `Host` traits of the `wfrun:node`
//! imports. `state` and `config` answer `unavailable` until workflows wire
//! them to SQLite and the workflow definition.

use super::capture::Echoer;
use super::limits::{LimitExceeded, StoreLimiter};
use crate::outcome::LogLine;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wfrun_host_api::{config, log, state};

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
        LogSink {
            lines: Vec::new(),
            bytes: 0,
            limit,
            echo,
        }
    }

    async fn push(&mut self, level: &'static str, message: String) -> Result<(), LimitExceeded> {
        self.bytes = self
            .bytes
            .saturating_add(message.len() as u64 + LOG_LINE_OVERHEAD);
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

/// The data of one run's `Store`.
pub struct RunState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limiter: StoreLimiter,
    pub(super) logs: LogSink,
}

impl WasiView for RunState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl log::Host for RunState {
    async fn write(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            log::Level::Trace => "trace",
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        Ok(self.logs.push(level, message).await?)
    }
}

impl state::Host for RunState {
    fn get(
        &mut self,
        _key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, state::StateError>> {
        Ok(Err(state::StateError::Unavailable))
    }

    fn set(
        &mut self,
        _key: String,
        _value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), state::StateError>> {
        Ok(Err(state::StateError::Unavailable))
    }

    fn delete(&mut self, _key: String) -> wasmtime::Result<Result<(), state::StateError>> {
        Ok(Err(state::StateError::Unavailable))
    }

    fn list_keys(
        &mut self,
        _prefix: String,
    ) -> wasmtime::Result<Result<Vec<String>, state::StateError>> {
        Ok(Err(state::StateError::Unavailable))
    }
}

impl config::Host for RunState {
    fn get(
        &mut self,
        _key: String,
    ) -> wasmtime::Result<Result<Option<String>, config::ConfigError>> {
        Ok(Err(config::ConfigError::Unavailable))
    }

    fn get_secret(
        &mut self,
        _name: String,
    ) -> wasmtime::Result<Result<Option<String>, config::ConfigError>> {
        Ok(Err(config::ConfigError::Unavailable))
    }
}
