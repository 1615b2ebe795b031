//! Spare instances: the next instance of a costly program, made ahead.
//!
//! An interpreter's component (the Python node's CPython, ~0.5 ms) costs
//! more to instantiate than a small node takes to run, and most of that is
//! per instance: element segments set through `ref.func` libcalls, memory
//! images mapped. In a pooled sandbox (the daemon's), a run of such a
//! program leaves a refill behind it: a task that instantiates the program
//! once more, in a store of its own, under that run's limits, while the
//! host waits for the next trigger. The next run with the same limits takes
//! that instance instead of making one, attaches its own context (WASI
//! context, grants, services, egress policy, deadline) and calls it. Every
//! instance still serves exactly one run, and is torn down after it.
//!
//! A guest cannot tell the two paths apart. A spare is kept only if its
//! instantiation called no import at all ([`GuestState`]'s `touched`), so
//! the context it was made without was never seen; a program whose
//! instantiation calls one is always instantiated inline, with its run's
//! context, as before. A spare's instantiation is metered by the run's fuel
//! and memory limits like an inline one (the fuel it used is the run's);
//! the run's wall clock starts when it takes the spare.
//!
//! Spares are bounded: one per program, and [`PoolingOptions::spares`] in
//! all, each holding a permit for the pool slots it occupies. A program
//! whose fastest inline instantiation took less than
//! [`PoolingOptions::spare_threshold`] gets none (a small Rust node
//! instantiates in tens of microseconds; a spare would only move work
//! around). The same test decides whether a run's store is given back on
//! a blocking thread, after its report is built, rather than in line.
//!
//! [`GuestState`]: super::host::GuestState
//! [`PoolingOptions::spares`]: super::PoolingOptions::spares
//! [`PoolingOptions::spare_threshold`]: super::PoolingOptions::spare_threshold

use super::host::GuestState;
use super::{Instance, Limits};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An instance made ahead of its run: its store (before its run's context
/// goes in), the pool permit it holds until a run takes it, and the limits
/// it was made under.
pub(super) struct Spare {
    pub(super) store: wasmtime::Store<GuestState>,
    pub(super) permit: tokio::sync::OwnedSemaphorePermit,
    pub(super) instance: Instance,
    pub(super) limits: Limits,
}

/// How a refill ended.
pub(super) enum Made {
    /// An instance ready for the next run.
    Spare(Box<Spare>),
    /// The instantiation called an import: this program gets no spares.
    Touched,
    /// The instantiation failed or ran out of its budget; the next run
    /// instantiates inline and reports why.
    Failed,
}

/// One program's spare, shared by the clones of its [`Program`](super::Program).
#[derive(Default)]
pub(super) struct SpareSlot {
    held: Mutex<Option<Box<Spare>>>,
    /// A refill is under way.
    refilling: AtomicBool,
    /// The fastest inline instantiation, in nanoseconds (at least 1); 0
    /// before the first. The fastest, so that one instantiation slowed by
    /// a busy machine does not make a cheap program look costly.
    cost_ns: AtomicU64,
    /// An instantiation called an import: never made ahead again.
    touched: AtomicBool,
    /// Spares taken by runs.
    taken: AtomicU64,
}

impl SpareSlot {
    /// The spare, if one made under `limits` is ready. A spare made under
    /// other limits is dropped (on a blocking thread, off the run's path),
    /// so that the next refill uses these.
    pub(super) fn take(&self, limits: &Limits) -> Option<Box<Spare>> {
        let spare = self.held.lock().unwrap().take()?;
        if spare.limits != *limits {
            tokio::task::spawn_blocking(move || drop(spare));
            return None;
        }
        self.taken.fetch_add(1, Ordering::Relaxed);
        Some(spare)
    }

    /// Notes an inline instantiation: how long it took, and whether it
    /// called an import.
    pub(super) fn instantiated(&self, took: Duration, touched: bool) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1);
        let _ = self.cost_ns.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |fastest| {
            (fastest == 0 || took < fastest).then_some(took)
        });
        if touched {
            self.touched.store(true, Ordering::Relaxed);
        }
    }

    /// Whether its fastest inline instantiation took at least `threshold`.
    pub(super) fn costly(&self, threshold: Duration) -> bool {
        let fastest = self.cost_ns.load(Ordering::Relaxed);
        fastest != 0 && fastest >= u64::try_from(threshold.as_nanos()).unwrap_or(u64::MAX)
    }

    /// The refill to make now, if one should start (the program's
    /// instantiation costs at least `threshold`, calls no import, and no
    /// spare is held or being made).
    pub(super) fn claim_refill(self: &Arc<Self>, threshold: Duration) -> Option<Refill> {
        let claimed = self.costly(threshold)
            && !self.touched.load(Ordering::Relaxed)
            && self.held.lock().unwrap().is_none()
            && self.refilling.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_ok();
        claimed.then(|| Refill(Some(self.clone())))
    }

    /// Ends a refill.
    fn fill(&self, made: Made) {
        match made {
            Made::Spare(spare) => *self.held.lock().unwrap() = Some(spare),
            Made::Touched => self.touched.store(true, Ordering::Relaxed),
            Made::Failed => {}
        }
        self.refilling.store(false, Ordering::Release);
    }

    /// Whether a spare is ready.
    pub(super) fn ready(&self) -> bool {
        self.held.lock().unwrap().is_some()
    }

    /// How many spares runs have taken.
    pub(super) fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }
}

/// A claimed refill of a slot: ends it when filled, or as a failure when
/// dropped unfilled (not started, its task dropped with the maker, or
/// panicking).
pub(super) struct Refill(Option<Arc<SpareSlot>>);

impl Refill {
    pub(super) fn fill(mut self, made: Made) {
        if let Some(slot) = self.0.take() {
            slot.fill(made);
        }
    }
}

impl Drop for Refill {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            slot.fill(Made::Failed);
        }
    }
}

/// A refill, as the maker runs it.
type Job = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The thread that makes spares, at the lowest scheduling priority (nice
/// 19): a spare is made with CPU time no run, record or client wants, so
/// making it never delays the run before it from being recorded.
pub(super) struct Maker {
    jobs: tokio::sync::mpsc::UnboundedSender<Job>,
}

impl Maker {
    /// Starts the thread; it ends when the maker is dropped.
    pub(super) fn start() -> std::io::Result<Maker> {
        let (jobs, mut queue) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name("wfrun-spares".to_owned()).spawn(move || {
            // `None` (who = 0) names the calling thread on Linux, where each
            // thread has its own nice value. A refusal leaves it at normal
            // priority.
            let _ = rustix::process::setpriority_process(None, 19);
            runtime.block_on(async move {
                while let Some(job) = queue.recv().await {
                    tokio::spawn(job);
                }
            });
        })?;
        Ok(Maker { jobs })
    }

    /// Runs `job` on the maker's thread.
    pub(super) fn spawn(&self, job: impl std::future::Future<Output = ()> + Send + 'static) {
        let _ = self.jobs.send(Box::pin(job));
    }
}
