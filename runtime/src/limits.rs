//! The budget of one run, and limits as requested or as ceilings.
//!
//! [`Limits`] is what a run gets: fuel, linear memory, wall-clock time,
//! output and captured bytes, and fixed counts (instances, tables, memories,
//! table elements, host resources). The sandbox enforces it. [`LimitRequest`]
//! is the same set with every value optional: what a workflow asks for, or
//! an operator's ceilings (`--memory`, a job's `memory`, `[daemon]
//! max_memory`). [`LimitRequest::grant`] combines the two. [`LimitKey`] is
//! the single parser for every limit value, whatever file or flag it comes
//! from, with its range. Imports only [`crate::units`].

use crate::units::{self, UnitError};
use std::ops::RangeInclusive;
use std::time::Duration;

/// The budget of one run. Every field has a default, documented in
/// `wfrun exec --help` and `docs/cli.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Fuel units the guest may consume (about one per wasm instruction).
    pub fuel: u64,
    /// Bytes of linear memory, summed over every memory of the instance.
    pub memory_bytes: u64,
    /// Wall-clock time from instantiation to the end of the run; for a run
    /// served by an instance made ahead of it (`sandbox::spare`), from
    /// when the run takes that instance.
    pub timeout: Duration,
    /// Bytes of a node's output JSON.
    pub output_bytes: u64,
    /// Bytes captured from stdout and from stderr (each).
    pub stdio_bytes: u64,
    /// Bytes of `log` messages.
    pub log_bytes: u64,
    /// Core instances created by one run.
    pub instances: usize,
    /// Tables created by one run.
    pub tables: usize,
    /// Linear memories created by one run.
    pub memories: usize,
    /// Table elements, summed over all tables of the instance.
    pub table_elements: usize,
    /// Host resources (open files, streams, pollables) the guest may hold at
    /// once in its resource table.
    pub resources: usize,
}

impl Limits {
    /// Default fuel: 10 billion units, under a second of tight-loop guest
    /// CPU on this project's machines (15–22 G units/s, docs/performance.md).
    pub const DEFAULT_FUEL: u64 = 10_000_000_000;
    /// Default memory: 128 MiB across all linear memories.
    pub const DEFAULT_MEMORY_BYTES: u64 = 128 * 1024 * 1024;
    /// Default timeout: 30 seconds.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default node output: 16 MiB.
    pub const DEFAULT_OUTPUT_BYTES: u64 = 16 * 1024 * 1024;
    /// Default captured stdout and stderr: 8 MiB each.
    pub const DEFAULT_STDIO_BYTES: u64 = 8 * 1024 * 1024;
    /// Default log bytes: 4 MiB.
    pub const DEFAULT_LOG_BYTES: u64 = 4 * 1024 * 1024;
    /// The longest timeout a run may have: 7 days.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
}

/// How much a run's `/outputs` directory may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputsLimit {
    /// Bytes in all files together (their apparent sizes).
    pub max_bytes: u64,
    /// Files and directories, at most.
    pub max_files: u64,
}

impl OutputsLimit {
    /// 64 MiB.
    pub const DEFAULT_BYTES: u64 = 64 * 1024 * 1024;
    /// 1,000 entries.
    pub const DEFAULT_FILES: u64 = 1000;
}

impl Default for OutputsLimit {
    fn default() -> Self {
        OutputsLimit { max_bytes: Self::DEFAULT_BYTES, max_files: Self::DEFAULT_FILES }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: Self::DEFAULT_FUEL,
            memory_bytes: Self::DEFAULT_MEMORY_BYTES,
            timeout: Self::DEFAULT_TIMEOUT,
            output_bytes: Self::DEFAULT_OUTPUT_BYTES,
            stdio_bytes: Self::DEFAULT_STDIO_BYTES,
            log_bytes: Self::DEFAULT_LOG_BYTES,
            // A Rust wasm32-wasip2 component needs about 6 core instances,
            // 2 tables and 2 memories; these leave generous headroom while
            // bounding what a hostile component can make the host allocate.
            instances: 100,
            tables: 100,
            memories: 16,
            table_elements: 100_000,
            resources: 10_000,
        }
    }
}

/// Limits as a bundle requests them, or as an operator caps them: each
/// `None` means "no opinion" (for a request: whatever the operator allows;
/// for a ceiling: the default of [`Limits`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitRequest {
    /// Fuel units.
    pub fuel: Option<u64>,
    /// Linear memory bytes.
    pub memory_bytes: Option<u64>,
    /// Wall-clock limit per attempt.
    pub timeout: Option<Duration>,
    /// Output bytes.
    pub output_bytes: Option<u64>,
    /// Captured stdout and stderr bytes, each.
    pub stdio_bytes: Option<u64>,
    /// Log bytes.
    pub log_bytes: Option<u64>,
}

/// One request that asked for more than its ceiling allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverCeiling {
    /// Which limit.
    pub key: LimitKey,
    /// What was asked for, as text.
    pub requested: String,
    /// The ceiling it was held to, as text.
    pub ceiling: String,
}

impl LimitRequest {
    /// The limits a run gets: each requested value, but never more than
    /// the ceiling (`ceilings`, each `None` meaning the default from
    /// [`Limits::default`]). An unrequested value gets the ceiling.
    pub fn grant(&self, ceilings: &LimitRequest) -> Limits {
        fn pick<T: Ord + Copy>(request: Option<T>, ceiling: Option<T>, default: T) -> T {
            let ceiling = ceiling.unwrap_or(default);
            request.map_or(ceiling, |r| r.min(ceiling))
        }
        let d = Limits::default();
        Limits {
            fuel: pick(self.fuel, ceilings.fuel, d.fuel),
            memory_bytes: pick(self.memory_bytes, ceilings.memory_bytes, d.memory_bytes),
            timeout: pick(self.timeout, ceilings.timeout, d.timeout),
            output_bytes: pick(self.output_bytes, ceilings.output_bytes, d.output_bytes),
            stdio_bytes: pick(self.stdio_bytes, ceilings.stdio_bytes, d.stdio_bytes),
            log_bytes: pick(self.log_bytes, ceilings.log_bytes, d.log_bytes),
            ..d
        }
    }

    /// The requested values that `ceilings` hold lower than asked.
    pub fn over(&self, ceilings: &LimitRequest) -> Vec<OverCeiling> {
        let granted = self.grant(ceilings);
        let mut over = Vec::new();
        let mut check = |key: LimitKey, requested: Option<u64>, got: u64| {
            if let Some(requested) = requested.filter(|r| *r > got) {
                over.push(OverCeiling { key, requested: key.show(requested), ceiling: key.show(got) });
            }
        };
        check(LimitKey::Fuel, self.fuel, granted.fuel);
        check(LimitKey::Memory, self.memory_bytes, granted.memory_bytes);
        check(LimitKey::MaxOutput, self.output_bytes, granted.output_bytes);
        check(LimitKey::MaxStdio, self.stdio_bytes, granted.stdio_bytes);
        check(LimitKey::MaxLog, self.log_bytes, granted.log_bytes);
        if let Some(requested) = self.timeout.filter(|t| *t > granted.timeout) {
            over.push(OverCeiling {
                key: LimitKey::Timeout,
                requested: humantime::format_duration(requested).to_string(),
                ceiling: humantime::format_duration(granted.timeout).to_string(),
            });
        }
        over
    }

    /// Sets `key` from `text`, parsed and range-checked by the key's parser ([`LimitKey::parse_timeout`], [`LimitKey::parse_memory`], …).
    pub fn set(&mut self, key: LimitKey, text: &str) -> Result<(), UnitError> {
        match key {
            LimitKey::Fuel => self.fuel = Some(LimitKey::parse_fuel(text)?),
            LimitKey::Memory => self.memory_bytes = Some(key.parse_size(text)?),
            LimitKey::Timeout => self.timeout = Some(LimitKey::parse_timeout(text)?),
            LimitKey::MaxOutput => self.output_bytes = Some(key.parse_size(text)?),
            LimitKey::MaxStdio => self.stdio_bytes = Some(key.parse_size(text)?),
            LimitKey::MaxLog => self.log_bytes = Some(key.parse_size(text)?),
        }
        Ok(())
    }

    /// Each value of `over` where it has one, else this one's.
    pub fn overlay(&self, over: &LimitRequest) -> LimitRequest {
        LimitRequest {
            fuel: over.fuel.or(self.fuel),
            memory_bytes: over.memory_bytes.or(self.memory_bytes),
            timeout: over.timeout.or(self.timeout),
            output_bytes: over.output_bytes.or(self.output_bytes),
            stdio_bytes: over.stdio_bytes.or(self.stdio_bytes),
            log_bytes: over.log_bytes.or(self.log_bytes),
        }
    }
}

/// A limit that can be requested or capped, with its one parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKey {
    /// `fuel`: units, 1 to 10^15.
    Fuel,
    /// `memory`: 64KiB to 64GiB.
    Memory,
    /// `timeout`: 1ms to 7 days.
    Timeout,
    /// `max_output`: up to 4GiB.
    MaxOutput,
    /// `max_stdio`: up to 4GiB.
    MaxStdio,
    /// `max_log`: up to 4GiB.
    MaxLog,
}

/// The memory range every memory limit or ceiling must fall in.
pub const MEMORY_RANGE: RangeInclusive<u64> = 64 * 1024..=64 * 1024 * 1024 * 1024;
/// The range of output, stdio and log caps.
pub const CAPTURE_RANGE: RangeInclusive<u64> = 0..=4 * 1024 * 1024 * 1024;
/// The range of fuel budgets.
pub const FUEL_RANGE: RangeInclusive<u64> = 1..=1_000_000_000_000_000;

impl LimitKey {
    /// The key as written in files (`memory`, `max_output`, ...).
    pub fn name(self) -> &'static str {
        match self {
            LimitKey::Fuel => "fuel",
            LimitKey::Memory => "memory",
            LimitKey::Timeout => "timeout",
            LimitKey::MaxOutput => "max_output",
            LimitKey::MaxStdio => "max_stdio",
            LimitKey::MaxLog => "max_log",
        }
    }

    fn parse_size(self, text: &str) -> Result<u64, UnitError> {
        let range = if self == LimitKey::Memory { MEMORY_RANGE } else { CAPTURE_RANGE };
        units::size(text, range)
    }

    /// Parses a timeout: 1ms to 7 days.
    pub fn parse_timeout(text: &str) -> Result<Duration, UnitError> {
        units::duration(text, Duration::from_millis(1)..=Limits::MAX_TIMEOUT)
    }

    /// Parses a memory size: 64KiB to 64GiB.
    pub fn parse_memory(text: &str) -> Result<u64, UnitError> {
        units::size(text, MEMORY_RANGE)
    }

    /// Parses an output, stdio or log cap: up to 4GiB.
    pub fn parse_capture(text: &str) -> Result<u64, UnitError> {
        units::size(text, CAPTURE_RANGE)
    }

    /// Parses a fuel budget (a plain number).
    pub fn parse_fuel(text: &str) -> Result<u64, UnitError> {
        let out_of_range = || out_of_range(text.to_owned(), FUEL_RANGE.start(), FUEL_RANGE.end());
        Self::check_fuel(text.trim().parse().map_err(|_| out_of_range())?).map_err(|_| out_of_range())
    }

    /// Checks a fuel budget given as a number (TOML, JSON).
    pub fn check_fuel(fuel: u64) -> Result<u64, UnitError> {
        within(fuel, &FUEL_RANGE, |v| v.to_string())
    }

    /// Checks a memory size given as a number of bytes.
    pub fn check_memory(bytes: u64) -> Result<u64, UnitError> {
        within(bytes, &MEMORY_RANGE, |v| units::format_size(*v))
    }

    /// Checks a timeout given as a duration.
    pub fn check_timeout(timeout: Duration) -> Result<Duration, UnitError> {
        within(timeout, &(Duration::from_millis(1)..=Limits::MAX_TIMEOUT), |d| {
            humantime::format_duration(*d).to_string()
        })
    }

    fn show(self, value: u64) -> String {
        match self {
            LimitKey::Fuel => value.to_string(),
            _ => units::format_size(value),
        }
    }
}

/// `value` if it lies in `range`, else the error naming both, as `show` writes them.
fn within<T: PartialOrd>(value: T, range: &RangeInclusive<T>, show: impl Fn(&T) -> String) -> Result<T, UnitError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(UnitError::OutOfRange { value: show(&value), min: show(range.start()), max: show(range.end()) })
    }
}

fn out_of_range(value: String, min: &u64, max: &u64) -> UnitError {
    UnitError::OutOfRange { value, min: min.to_string(), max: max.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_gets_what_it_asks_for_but_never_more_than_the_ceiling() {
        let request =
            LimitRequest { timeout: Some(Duration::from_secs(60)), memory_bytes: Some(1024), ..Default::default() };
        let defaults = request.grant(&LimitRequest::default());
        assert_eq!(defaults.timeout, Limits::DEFAULT_TIMEOUT, "capped by the default ceiling");
        assert_eq!(defaults.memory_bytes, 1024, "asked for less: gets less");
        assert_eq!(defaults.fuel, Limits::DEFAULT_FUEL, "unrequested: gets the ceiling");
        let raised = LimitRequest { timeout: Some(Duration::from_secs(120)), ..Default::default() };
        assert_eq!(request.grant(&raised).timeout, Duration::from_secs(60));
        let over = request.over(&LimitRequest::default());
        assert_eq!(over.len(), 1);
        assert_eq!(over[0].key, LimitKey::Timeout);
    }

    #[test]
    fn every_limit_value_is_range_checked_by_one_parser() {
        let mut request = LimitRequest::default();
        request.set(LimitKey::Memory, "64MiB").unwrap();
        assert_eq!(request.memory_bytes, Some(64 * 1024 * 1024));
        assert!(request.set(LimitKey::Memory, "1KiB").is_err());
        assert!(request.set(LimitKey::Timeout, "0s").is_err());
        assert!(request.set(LimitKey::Timeout, "8days").is_err());
        assert!(request.set(LimitKey::Fuel, "0").is_err());
        assert!(request.set(LimitKey::MaxLog, "5GiB").is_err());
        request.set(LimitKey::Timeout, "2s").unwrap();
        assert_eq!(request.timeout, Some(Duration::from_secs(2)));
    }
}
