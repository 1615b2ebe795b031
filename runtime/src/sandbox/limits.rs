//! The enforcement of a run's [`Limits`] inside the store.
//!
//! [`Limits`] (in [`crate::limits`]) is the budget of one run.
//! [`StoreLimiter`] is the `wasmtime::ResourceLimiter` that enforces the
//! memory side and records the peak. When a guest goes past a limit, the host
//! raises a [`LimitExceeded`] error as a trap; [`classify`] later turns any
//! trap into one stable [`ErrorCode`].

pub use crate::limits::Limits;
use crate::outcome::ErrorCode;
use wasmtime::{ResourceLimiter, Trap};

/// A limit the guest went past, raised by the host as a trap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    /// Linear memory growth past `Limits::memory_bytes`.
    #[error("memory limit of {limit} bytes exceeded: the guest asked for {requested} bytes in all")]
    Memory {
        /// The limit in bytes.
        limit: u64,
        /// The total the guest would have had after the growth.
        requested: u64,
    },
    /// Table growth past `Limits::table_elements`, summed over all tables.
    #[error("table limit of {limit} elements exceeded: the guest asked for {requested} in all")]
    TableElements {
        /// The limit in elements.
        limit: usize,
        /// The size the table would have had.
        requested: usize,
    },
    /// More than `Limits::instances`, `tables` or `memories` of a kind.
    #[error("the component creates more {what} than the limit of {limit}")]
    Count {
        /// `instances`, `tables` or `memories`.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// A node's output longer than `Limits::output_bytes`.
    #[error("node output of {size} bytes exceeds the limit of {limit} bytes")]
    Output {
        /// The limit in bytes.
        limit: u64,
        /// The output's size.
        size: u64,
    },
    /// More bytes on stdout/stderr than `Limits::stdio_bytes`.
    #[error("{stream} exceeded the capture limit of {limit} bytes")]
    Stdio {
        /// `stdout` or `stderr`.
        stream: &'static str,
        /// The limit in bytes.
        limit: u64,
    },
    /// More `log` bytes than `Limits::log_bytes`.
    #[error("log output exceeded the limit of {limit} bytes")]
    Log {
        /// The limit in bytes.
        limit: u64,
    },
}

impl LimitExceeded {
    /// The stable code this violation ends a run with.
    pub fn code(&self) -> ErrorCode {
        match self {
            LimitExceeded::Memory { .. } | LimitExceeded::TableElements { .. } | LimitExceeded::Count { .. } => {
                ErrorCode::MemoryLimit
            }
            LimitExceeded::Output { .. } | LimitExceeded::Stdio { .. } | LimitExceeded::Log { .. } => {
                ErrorCode::OutputLimit
            }
        }
    }
}

/// Enforces the memory side of [`Limits`] for one store and records the peak.
///
/// Linear memories are counted together, and so are table elements: wasmtime
/// reports each growth of each memory or table (creation included, as growth
/// from 0) and the limiter keeps the running totals.
#[derive(Debug)]
pub struct StoreLimiter {
    memory: Tally,
    table_elements: Tally,
    instances: usize,
    tables: usize,
    memories: usize,
}

/// A running total of one resource across a store, with its limit and peak.
#[derive(Debug)]
struct Tally {
    used: u64,
    peak: u64,
    limit: u64,
    /// The last allowed growth and the peak before it, undone if it fails.
    last: Option<(u64, u64)>,
}

impl Tally {
    fn new(limit: u64) -> Self {
        Tally { used: 0, peak: 0, limit, last: None }
    }

    /// Accounts for one memory or table growing from `current` to `desired`.
    /// `Ok(false)` past the item's own declared maximum (the wasm `grow`
    /// instruction then returns -1, as the spec says); `Err(requested)` past
    /// the limit.
    fn grow(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> Result<bool, u64> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let growth = (desired as u64).saturating_sub(current as u64);
        let requested = self.used.saturating_add(growth);
        if requested > self.limit {
            return Err(requested);
        }
        self.last = Some((growth, self.peak));
        self.used = requested;
        self.peak = self.peak.max(requested);
        Ok(true)
    }

    /// Undoes the last growth, which wasmtime then failed to perform.
    fn undo(&mut self) {
        if let Some((growth, peak)) = self.last.take() {
            self.used = self.used.saturating_sub(growth);
            self.peak = peak;
        }
    }
}

impl StoreLimiter {
    /// A limiter enforcing `limits`.
    pub fn new(limits: &Limits) -> Self {
        StoreLimiter {
            memory: Tally::new(limits.memory_bytes),
            table_elements: Tally::new(limits.table_elements as u64),
            instances: limits.instances,
            tables: limits.tables,
            memories: limits.memories,
        }
    }

    /// The largest total of linear memory seen, in bytes.
    pub fn peak_memory_bytes(&self) -> u64 {
        self.memory.peak
    }
}

impl ResourceLimiter for StoreLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        // A trap past the limit, not `Ok(false)`: a guest whose allocator
        // cannot cope with failed growth would trap anyway, but with an
        // unrelated message. Trapping here names the limit.
        let limit = self.memory.limit;
        self.memory
            .grow(current, desired, maximum)
            .map_err(|requested| LimitExceeded::Memory { limit, requested }.into())
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory.undo();
        Ok(())
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let limit = self.table_elements.limit as usize;
        self.table_elements
            .grow(current, desired, maximum)
            .map_err(|requested| LimitExceeded::TableElements { limit, requested: requested as usize }.into())
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.table_elements.undo();
        Ok(())
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.tables
    }

    fn memories(&self) -> usize {
        self.memories
    }
}

/// A host import failed for the host's own reasons (its database, its
/// disk): the run ends as `host_error`, not as the guest's `trap`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("host error: {0}")]
pub struct HostFault(pub String);

/// Maps an error that ended a run to its stable code.
///
/// Limits the host raises itself travel as [`LimitExceeded`]; wasmtime's own
/// traps map by kind. Anything else a guest can cause is a `trap`.
pub fn classify(error: &wasmtime::Error, limits: &Limits) -> (ErrorCode, String) {
    if let Some(fault) = error.downcast_ref::<HostFault>() {
        return (ErrorCode::HostError, fault.to_string());
    }
    if let Some(limit) = error.downcast_ref::<LimitExceeded>() {
        return (limit.code(), limit.to_string());
    }
    if let Some(trap) = error.downcast_ref::<Trap>() {
        return match trap {
            Trap::OutOfFuel => (ErrorCode::FuelExhausted, format!("fuel budget of {} units exhausted", limits.fuel)),
            Trap::Interrupt => (
                ErrorCode::Timeout,
                format!("run exceeded its timeout of {}", humantime::format_duration(limits.timeout)),
            ),
            Trap::StackOverflow => (ErrorCode::StackOverflow, "wasm stack exhausted".to_owned()),
            other => (ErrorCode::Trap, format!("guest trapped: {other}")),
        };
    }
    if let Some(limit) = count_limit(error, limits) {
        return (limit.code(), limit.to_string());
    }
    (ErrorCode::Trap, format!("{error:#}"))
}

/// Wasmtime enforces the instance, table and memory counts of
/// [`ResourceLimiter`] itself and reports a violation as an untyped error
/// ("resource limit exceeded: instance count too high at N"). This is the one
/// place that reads that message; `count_limits_are_classified` guards it.
fn count_limit(error: &wasmtime::Error, limits: &Limits) -> Option<LimitExceeded> {
    let text = format!("{error:#}");
    if !text.contains("resource limit exceeded") {
        return None;
    }
    let (what, limit) = if text.contains("instance count") {
        ("instances", limits.instances)
    } else if text.contains("table count") {
        ("tables", limits.tables)
    } else {
        ("memories", limits.memories)
    };
    Some(LimitExceeded::Count { what, limit })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 65536;

    #[test]
    fn memory_is_counted_across_memories_and_capped() {
        let limits = Limits { memory_bytes: 4 * PAGE as u64, ..Limits::default() };
        let mut limiter = StoreLimiter::new(&limits);
        // Two memories of two pages each fill the budget exactly.
        assert!(limiter.memory_growing(0, 2 * PAGE, None).unwrap());
        assert!(limiter.memory_growing(0, 2 * PAGE, None).unwrap());
        assert_eq!(limiter.peak_memory_bytes(), 4 * PAGE as u64);
        // One more page in either is refused with a typed error.
        let err = limiter.memory_growing(2 * PAGE, 3 * PAGE, None).unwrap_err();
        let exceeded = err.downcast_ref::<LimitExceeded>().unwrap();
        assert_eq!(exceeded.code(), ErrorCode::MemoryLimit);
    }

    #[test]
    fn failed_growth_is_not_counted_nor_its_peak() {
        let limits = Limits { memory_bytes: 4 * PAGE as u64, ..Limits::default() };
        let mut limiter = StoreLimiter::new(&limits);
        assert!(limiter.memory_growing(0, PAGE, None).unwrap());
        assert!(limiter.memory_growing(PAGE, 3 * PAGE, None).unwrap());
        limiter.memory_grow_failed(wasmtime::format_err!("mmap failed")).unwrap();
        assert_eq!(limiter.peak_memory_bytes(), PAGE as u64);
        assert!(limiter.memory_growing(PAGE, 4 * PAGE, None).unwrap());
    }

    #[test]
    fn growth_past_a_declared_maximum_is_refused_softly() {
        let mut limiter = StoreLimiter::new(&Limits::default());
        // memory.grow returns -1, as the wasm spec says; no trap, no count.
        assert!(!limiter.memory_growing(PAGE, 3 * PAGE, Some(2 * PAGE)).unwrap());
        assert_eq!(limiter.peak_memory_bytes(), 0);
        assert!(!limiter.table_growing(1, 3, Some(2)).unwrap());
    }

    #[test]
    fn table_elements_are_capped_across_tables() {
        let limits = Limits { table_elements: 10, ..Limits::default() };
        let mut limiter = StoreLimiter::new(&limits);
        assert!(limiter.table_growing(0, 6, None).unwrap());
        assert!(limiter.table_growing(0, 4, None).unwrap());
        let err = limiter.table_growing(4, 5, None).unwrap_err();
        assert_eq!(err.downcast_ref::<LimitExceeded>().unwrap().code(), ErrorCode::MemoryLimit);
    }
}
