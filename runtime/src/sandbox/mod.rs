//! The sandbox: one wasmtime engine per process, one store per run.
//!
//! [`Sandbox`] owns the `Engine` (component model, fuel metering, epoch
//! interruption, a bounded wasm stack), the `Linker` with WASI 0.2 and the
//! `wfrun:node` imports, and the thread that advances the epoch. It is built
//! once and shared. [`Sandbox::load`] compiles a component's bytes into a
//! [`Program`]: the component classified as a node or a job and
//! pre-instantiated, so nothing that can be done at load time is done per
//! run. The sandbox knows nothing of bundle files, workflows or the store:
//! it takes bytes and a name, and reports a [`LoadError`]. [`Sandbox::run`] runs a program once under a [`RunRequest`]'s limits
//! and grants and always returns a [`RunReport`]: a guest can make a run fail,
//! never the host.
//!
//! A guest starts with no ambient authority: no preopened directories, no
//! environment variables, no sockets, no name lookups, no HTTP. [`Grants`]
//! adds directories, variables and an egress policy explicitly.

pub mod cache;
mod capture;
mod host;
mod limits;
pub mod shape;
mod spare;

pub use cache::Origin;
pub use capture::Tee;
pub use host::{NodeServices, StateAccess};
pub use limits::{HostFault, LimitExceeded, Limits};

use crate::egress::client::EgressHooks;
use crate::egress::{EgressPolicy, EgressRun, rule::Scheme};
use crate::outcome::{ErrorCode, GuestKind, NodeFailure, RunReport, RunStatus};
use capture::{Capture, EchoThread};
use host::{GuestState, LogSink};
use limits::classify;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, UpdateDeadline};
use wasmtime_wasi::p2::bindings::{Command, CommandPre};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};
use wfrun_host_api::{Node, NodePre};

/// How often the epoch advances; the granularity of wall-clock timeouts.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Engine-wide settings, fixed for the life of a [`Sandbox`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOptions {
    /// Meter fuel. When off, `Limits::fuel` is not enforced and
    /// `fuel_consumed` is reported as 0; `docs/performance.md` has the cost.
    pub fuel_metering: bool,
    /// The most native stack wasm code may use before `stack_overflow`.
    pub max_wasm_stack: usize,
    /// Keep compiled components here and load them instead of compiling
    /// again (see [`cache`]); `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// Stop running wasm code at the run's deadline (an epoch check in every
    /// loop and function entry, and a yield every 10 ms). Off, `--timeout`
    /// only stops a guest waiting in a host call and fuel is the only bound
    /// on CPU: for measuring the check's cost and for embedders who meter
    /// fuel alone.
    pub epoch_interruption: bool,
    /// Take instances, memories, tables and fiber stacks from pools
    /// reserved up front instead of mapping them per run; `None` allocates
    /// on demand. See [`PoolingOptions`].
    pub pooling: Option<PoolingOptions>,
}

/// How large the pooling allocator's pools are. Each run's own limits are
/// still enforced by the store limiter; the pools must only be large enough
/// never to refuse what a run's limits allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolingOptions {
    /// Runs that may be instantiated at once.
    pub concurrent_runs: u32,
    /// The largest linear memory any run may be granted (the operator's
    /// memory ceiling); each memory slot reserves this much address space.
    pub max_memory_bytes: u64,
    /// Instances made ahead of their runs, at most, over all programs (one
    /// per program); 0 makes none. See the `spare` module.
    pub spares: u32,
    /// A program gets a spare only if its fastest inline instantiation
    /// took at least this long.
    pub spare_threshold: Duration,
}

impl PoolingOptions {
    /// Spares kept by default: enough for a Python and a JavaScript job.
    pub const DEFAULT_SPARES: u32 = 2;
    /// The default spare threshold: 200 µs, several times what a small
    /// Rust node's instantiation takes, under half the Python node's.
    pub const DEFAULT_SPARE_THRESHOLD: Duration = Duration::from_micros(200);

    /// Pools for `concurrent_runs` runs with memories of up to
    /// `max_memory_bytes`, and the default spares.
    pub fn new(concurrent_runs: u32, max_memory_bytes: u64) -> Self {
        PoolingOptions {
            concurrent_runs,
            max_memory_bytes,
            spares: Self::DEFAULT_SPARES,
            spare_threshold: Self::DEFAULT_SPARE_THRESHOLD,
        }
    }
}

impl EngineOptions {
    /// Default maximum wasm stack: 512 KiB (wasmtime's own default).
    pub const DEFAULT_MAX_WASM_STACK: usize = 512 * 1024;
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            fuel_metering: true,
            max_wasm_stack: Self::DEFAULT_MAX_WASM_STACK,
            cache_dir: None,
            epoch_interruption: true,
            pooling: None,
        }
    }
}

/// Why a component cannot be loaded. Every variant names the component.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// The component does not validate or compile.
    #[error("{name}: invalid component: {reason}")]
    Invalid {
        /// The component's name (its bundle path, or `path#node`).
        name: String,
        /// What the validator or compiler said.
        reason: String,
    },
    /// The component's shape passes a limit checked before compilation
    /// (nesting, sections, functions, control depth, size).
    #[error("{name}: refused before compilation: {error}")]
    Shape {
        /// The component's name.
        name: String,
        /// The limit passed.
        error: shape::ShapeError,
    },
    /// The component exports neither a node nor a command.
    #[error(
        "{name}: exports neither `{node}` (a node) nor `wasi:cli/run@0.2.x` (a job); \
         its exports are: {exports}",
        node = wfrun_host_api::HANDLER_EXPORT
    )]
    NoKnownWorld {
        /// The component's name.
        name: String,
        /// The component's export names, comma-separated (or `none`).
        exports: String,
    },
    /// The component imports something wfrun does not offer.
    #[error("{name}: cannot be linked: {reason}")]
    Unlinkable {
        /// The component's name.
        name: String,
        /// The linker's explanation, naming the import.
        reason: String,
    },
}

impl LoadError {
    /// The stable detail code under `invalid_bundle`.
    pub fn detail(&self) -> &'static str {
        match self {
            LoadError::Invalid { .. } => "invalid_component",
            LoadError::Shape { error, .. } => error.detail(),
            LoadError::NoKnownWorld { .. } => "no_known_world",
            LoadError::Unlinkable { .. } => "unlinkable",
        }
    }
}

/// Why a sandbox could not be built: a broken engine configuration.
#[derive(Debug, thiserror::Error)]
#[error("cannot configure the wasm engine: {0}")]
pub struct SandboxError(String);

/// One process's wasm engine, linker and epoch clock.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<GuestState>,
    options: EngineOptions,
    cache: Option<cache::ArtifactCache>,
    _ticker: Option<EpochTicker>,
    /// A pooled sandbox's run slots: one per concurrent run, held by a
    /// run's store until it is gone (which may be after the run).
    slots: Option<Arc<tokio::sync::Semaphore>>,
    spares: Option<Spares>,
}

/// A pooled sandbox's spare instances: the pool slots they may hold, and
/// how costly an instantiation must be to get one.
struct Spares {
    permits: Arc<tokio::sync::Semaphore>,
    threshold: Duration,
    /// Started with the first refill.
    maker: std::sync::OnceLock<Option<spare::Maker>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("options", &self.options).finish_non_exhaustive()
    }
}

/// A compiled, pre-instantiated bundle, ready to run many times.
#[derive(Clone)]
pub struct Program {
    pre: ProgramPre,
    digest: String,
    name: String,
    origin: Origin,
    imports: Vec<String>,
    spare: Arc<spare::SpareSlot>,
}

#[derive(Clone)]
enum ProgramPre {
    Node(NodePre<GuestState>),
    Job(CommandPre<GuestState>),
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program").field("kind", &self.kind()).field("digest", &self.digest).finish()
    }
}

impl Program {
    /// Whether this is a node or a job.
    pub fn kind(&self) -> GuestKind {
        match self.pre {
            ProgramPre::Node(_) => GuestKind::Node,
            ProgramPre::Job(_) => GuestKind::Job,
        }
    }

    /// `sha256:<hex>` of the component it was loaded from.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Whether it was compiled now or loaded from the artifact cache.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The component's top-level import names, e.g.
    /// `wasi:http/outgoing-handler@0.2.3`.
    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    /// Whether an instance of it, made ahead of its next run, is ready
    /// (see the `spare` module).
    pub fn spare_ready(&self) -> bool {
        self.spare.ready()
    }

    /// How many of its runs (over all its clones) were served by a spare.
    pub fn spares_taken(&self) -> u64 {
        self.spare.taken()
    }
}

/// A directory granted to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the guest sees it, e.g. `/data`.
    pub guest: String,
    /// Whether the guest may create, change and delete files in it.
    pub writable: bool,
}

/// What the guest may touch beyond its own memory. Empty by default.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// Preopened directories.
    pub dirs: Vec<DirGrant>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// Where HTTP requests and sockets may go; `None` refuses everything.
    pub egress: Option<Arc<EgressPolicy>>,
}

/// Where a run's stdout, stderr and log lines are echoed as they arrive.
/// They are always captured into the report as well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Echo {
    /// The guest's stdout.
    pub stdout: Tee,
    /// The guest's stderr.
    pub stderr: Tee,
    /// Lines from the `log` import.
    pub logs: Tee,
}

impl Default for Echo {
    fn default() -> Self {
        Echo::NONE
    }
}

impl Echo {
    /// Capture only; echo nothing.
    pub const NONE: Echo = Echo { stdout: Tee::None, stderr: Tee::None, logs: Tee::None };
}

/// One run of a program.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// A node's JSON input text. Ignored for jobs.
    pub input: String,
    /// A job's arguments, without the program name. Ignored for nodes.
    pub args: Vec<String>,
    /// Give a job this process's stdin (as `wasmtime run` does). Nodes
    /// never get stdin.
    pub inherit_stdin: bool,
    /// The run's budget.
    pub limits: Limits,
    /// Files and environment granted to the guest.
    pub grants: Grants,
    /// What to echo live.
    pub echo: Echo,
    /// What the `state` and `config` imports answer from.
    pub services: NodeServices,
}

impl Default for RunRequest {
    fn default() -> Self {
        RunRequest {
            input: "{}".to_owned(),
            args: Vec::new(),
            inherit_stdin: false,
            limits: Limits::default(),
            grants: Grants::default(),
            echo: Echo::NONE,
            services: NodeServices::default(),
        }
    }
}

impl Sandbox {
    /// A sandbox with `options`. Builds the engine and linker once.
    pub fn new(options: EngineOptions) -> Result<Sandbox, SandboxError> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(options.epoch_interruption)
            .consume_fuel(options.fuel_metering)
            // Components do not need the GC proposal, and wasmtime reports a
            // GC heap that hits the limiter as an untyped out-of-memory.
            .wasm_gc(false)
            .max_wasm_stack(options.max_wasm_stack)
            // Async runs execute on a separate fiber stack, which must hold
            // the wasm stack plus the host frames beneath it.
            .async_stack_size(options.max_wasm_stack.saturating_add(1024 * 1024));
        if let Some(pooling) = options.pooling {
            config.allocation_strategy(pooling_config(pooling));
        }
        let engine = Engine::new(&config).map_err(|e| SandboxError(format!("{e:#}")))?;
        let ticker = options.epoch_interruption.then(|| EpochTicker::start(engine.clone()));
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| SandboxError(format!("{e:#}")))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| SandboxError(format!("{e:#}")))?;
        Node::add_to_linker::<GuestState, HasSelf<GuestState>>(&mut linker, GuestState::host)
            .map_err(|e| SandboxError(format!("{e:#}")))?;
        let cache = options.cache_dir.as_deref().map(|dir| cache::ArtifactCache::new(dir, &engine));
        let spares = options.pooling.filter(|p| p.spares > 0).map(|p| Spares {
            permits: Arc::new(tokio::sync::Semaphore::new(p.spares as usize)),
            threshold: p.spare_threshold,
            maker: std::sync::OnceLock::new(),
        });
        let slots = options.pooling.map(|p| Arc::new(tokio::sync::Semaphore::new(p.concurrent_runs.max(1) as usize)));
        Ok(Sandbox { engine, linker, options, cache, _ticker: ticker, slots, spares })
    }

    /// The directory of the compiled-artifact cache, if there is one.
    pub fn cache_dir(&self) -> Option<&std::path::Path> {
        self.options.cache_dir.as_deref()
    }

    /// Compiles `component` (the bytes of one component, named `name` in
    /// errors and as a job's `argv[0]`), decides whether it is a node or a
    /// job, and pre-instantiates it against the linker.
    pub fn load(&self, component: &[u8], name: &str) -> Result<Program, LoadError> {
        self.load_digested(component, Sha256::digest(component).into(), name)
    }

    /// [`Sandbox::load`] of a `component` whose SHA-256 the caller has just
    /// computed over these same bytes (a plain component's bundle digest):
    /// a large component is not hashed twice.
    pub fn load_digested(&self, component: &[u8], digest: [u8; 32], name: &str) -> Result<Program, LoadError> {
        // What is compiled is first checked for a shape that would make
        // compiling it blow up; a cached artifact passed that check.
        let compile = || {
            shape::check(component, &shape::ShapeLimits::default())
                .map_err(|error| LoadError::Shape { name: name.to_owned(), error })?;
            Component::new(&self.engine, component)
                .map_err(|e| LoadError::Invalid { name: name.to_owned(), reason: format!("{e:#}") })
        };
        let (component, origin) = match &self.cache {
            Some(cache) => cache.load_or_compile(&self.engine, &digest, compile)?,
            None => (compile()?, Origin::Compiled),
        };
        self.program(component, origin, digest, name)
    }

    /// The program of the component whose SHA-256 is `digest`, if the
    /// artifact cache holds it; `None` when there is no cache or no sound
    /// entry, and the component's bytes are needed to compile it.
    pub fn load_cached(&self, digest: [u8; 32], name: &str) -> Option<Result<Program, LoadError>> {
        let component = self.cache.as_ref()?.load(&self.engine, &digest)?;
        Some(self.program(component, Origin::Cached, digest, name))
    }

    /// A loaded `component` made ready to run: a node or a job, linked.
    fn program(
        &self,
        component: Component,
        origin: Origin,
        digest: [u8; 32],
        name: &str,
    ) -> Result<Program, LoadError> {
        let component_type = component.component_type();
        let imports: Vec<String> = component_type.imports(&self.engine).map(|(name, _)| name.to_owned()).collect();
        let exports: Vec<String> = component_type.exports(&self.engine).map(|(name, _)| name.to_owned()).collect();
        let is_node = exports.iter().any(|e| e == wfrun_host_api::HANDLER_EXPORT);
        let is_job = exports.iter().any(|e| e.starts_with(wfrun_host_api::COMMAND_EXPORT_PREFIX));
        if !is_node && !is_job {
            let exports = if exports.is_empty() { "none".to_owned() } else { exports.join(", ") };
            return Err(LoadError::NoKnownWorld { name: name.to_owned(), exports });
        }
        let unlinkable = |e: wasmtime::Error| LoadError::Unlinkable { name: name.to_owned(), reason: format!("{e:#}") };
        let instance_pre = self.linker.instantiate_pre(&component).map_err(unlinkable)?;
        let pre = if is_node {
            ProgramPre::Node(NodePre::new(instance_pre).map_err(unlinkable)?)
        } else {
            ProgramPre::Job(CommandPre::new(instance_pre).map_err(unlinkable)?)
        };
        // argv[0] of a job: the file name, as `wasmtime run` gives it.
        let file_name = name.rsplit('/').next().unwrap_or(name);
        let argv0 = if file_name.is_empty() { "guest" } else { file_name };
        Ok(Program {
            pre,
            digest: format!("sha256:{}", hex::encode(digest)),
            name: argv0.to_owned(),
            origin,
            imports,
            spare: Arc::default(),
        })
    }

    /// Runs `program` once. Every failure the guest can cause, and every
    /// unusable grant or input, ends up in the report's `error_code`.
    pub async fn run(&self, program: &Program, request: &RunRequest) -> RunReport {
        let mut report = RunReport::rejected(ErrorCode::Trap, String::new());
        report.kind = Some(program.kind());
        report.bundle_digest = Some(program.digest.clone());

        if program.kind() == GuestKind::Node
            && let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&request.input)
        {
            report.error_code = Some(ErrorCode::InvalidInput);
            report.error_message = Some(format!("input is not valid JSON: {e}"));
            return report;
        }

        let limits = &request.limits;
        // A pooled run holds one of the pool's run slots until its store is
        // gone.
        let slot = match &self.slots {
            Some(slots) => Some(slots.clone().acquire_owned().await.expect("the run slots are never closed")),
            None => None,
        };
        let echo = (request.echo != Echo::NONE).then(EchoThread::start);
        let stdout = Capture::new("stdout", limits.stdio_bytes, EchoThread::echoer(echo.as_ref(), request.echo.stdout));
        let stderr = Capture::new("stderr", limits.stdio_bytes, EchoThread::echoer(echo.as_ref(), request.echo.stderr));
        let timeout = limits.timeout.min(Limits::MAX_TIMEOUT);
        // The run's clock starts here, and its deadline counts from the
        // same instant: a run stopped at its deadline reports at least its
        // timeout.
        let started = Instant::now();
        let deadline = started + timeout;
        let policy = request.grants.egress.clone().unwrap_or_else(|| Arc::new(EgressPolicy::deny_all()));
        let egress = EgressRun::new(policy, deadline);
        let wasi = match build_wasi(program, request, &egress, &stdout, &stderr) {
            Ok(wasi) => wasi,
            Err(message) => {
                report.error_code = Some(ErrorCode::InvalidInput);
                report.error_message = Some(message);
                return report;
            }
        };
        let logs = LogSink::new(limits.log_bytes, EchoThread::echoer(echo.as_ref(), request.echo.logs));
        let metering = self.metering();
        // A run with nothing to echo takes its program's spare, if one was
        // made under the same limits.
        let spare = match (&self.spares, request.echo == Echo::NONE) {
            (Some(_), true) => program.spare.take(limits),
            _ => None,
        };
        let (mut store, made) = match spare {
            // The spare's instantiation called no import, so its state holds
            // nothing but its limiter's count: the run's context (and its
            // captures, through the WASI context) goes in.
            Some(spare) => {
                // The store now holds the run's slot; its spare's is free
                // for the next spare.
                let spare::Spare { mut store, permit, instance, .. } = *spare;
                drop(permit);
                let state = store.data_mut();
                state.wasi = wasi;
                state.logs = logs;
                state.services = request.services.clone();
                state.egress = EgressHooks(egress.clone());
                if metering.epoch {
                    set_deadline(&mut store, deadline);
                }
                (store, Some(instance))
            }
            None => {
                let state = GuestState::new(wasi, limits, logs, request.services.clone(), EgressHooks(egress.clone()));
                (new_store(&self.engine, metering, state, limits, deadline), None)
            }
        };

        // The epoch deadline stops wasm code; this backstop also stops a
        // guest parked in a host call (a long sleep, a read that never ends).
        let backstop = timeout + EPOCH_TICK * 5;
        let outcome = tokio::time::timeout(backstop, async {
            let instance = match made {
                Some(instance) => instance,
                None => {
                    let instantiating = Instant::now();
                    let instance = instantiate(&program.pre, &mut store).await?;
                    program.spare.instantiated(instantiating.elapsed(), store.data().touched);
                    instance
                }
            };
            invoke(instance, &mut store, &request.input).await
        })
        .await;
        report.duration_ms = started.elapsed().as_secs_f64() * 1000.0;

        if self.options.fuel_metering {
            report.fuel_consumed = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        }
        report.peak_memory_bytes = store.data().limiter.peak_memory_bytes();
        report.stdout = stdout.contents();
        report.stderr = stderr.contents();
        let off_path = slot.is_some() && request.echo == Echo::NONE && program.spare.costly(self.spare_threshold());
        let (logs, trace, metrics) = if off_path {
            // A costly program's store (an interpreter's memory image) takes
            // a while to give back: that happens on a blocking thread, after
            // the report is on its way. The pool slot is free once it is done.
            // Only the instance goes: what the run held of the host (its
            // state attempt, whose end releases its pending writes; open
            // files, sockets and requests; its grants) is let go here, as an
            // inline teardown would.
            let state = store.data_mut();
            let kept = (
                std::mem::replace(&mut state.logs, LogSink::new(0, None)),
                std::mem::take(&mut state.trace),
                std::mem::take(&mut state.metrics),
            );
            drop(std::mem::take(&mut state.services));
            drop(std::mem::take(&mut state.table));
            drop(std::mem::replace(&mut state.wasi, WasiCtxBuilder::new().build()));
            tokio::task::spawn_blocking(move || drop((store, slot)));
            kept
        } else {
            // Destructuring drops the rest (the WASI context and its stream
            // handles) here, before the echo thread is told to finish.
            let GuestState { logs, trace, metrics, .. } = store.into_data();
            drop(slot);
            (logs, trace, metrics)
        };
        report.logs = logs.into_lines();
        report.trace = trace.into_calls();
        report.metrics = metrics.into_metrics();
        report.policy_violations = egress.violations();
        // The store is gone; with the captures dropped too, the echo thread
        // has every chunk and can finish writing them.
        drop((stdout, stderr));
        if let Some(echo) = echo {
            echo.finish();
        }

        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(_elapsed) => Err(wasmtime::Trap::Interrupt.into()),
        };
        settle(&mut report, outcome, limits);
        if request.echo == Echo::NONE {
            self.refill(program, limits);
        }
        report
    }

    /// The instantiation time from which a program counts as costly: gets a
    /// spare, and has its stores torn down off the run's path.
    fn spare_threshold(&self) -> Duration {
        self.spares.as_ref().map_or(Duration::MAX, |spares| spares.threshold)
    }

    /// Whether stores of this sandbox meter fuel and check epochs.
    fn metering(&self) -> Metering {
        Metering { fuel: self.options.fuel_metering, epoch: self.options.epoch_interruption }
    }

    /// Starts making `program`'s next instance under `limits`, if it should
    /// have a spare and has none (see the `spare` module).
    fn refill(&self, program: &Program, limits: &Limits) {
        let Some(spares) = &self.spares else { return };
        // Ends the refill however it ends: here, or in its task, even
        // dropped or panicking, so the program is not left without spares.
        let Some(refill) = program.spare.claim_refill(spares.threshold) else { return };
        let maker = spares.maker.get_or_init(|| {
            spare::Maker::start()
                .inspect_err(|e| tracing::warn!("cannot start the thread that makes spare instances: {e}"))
                .ok()
        });
        let (Some(maker), Ok(permit)) = (maker, spares.permits.clone().try_acquire_owned()) else { return };
        let (engine, metering, pre, limits) =
            (self.engine.clone(), self.metering(), program.pre.clone(), limits.clone());
        maker.spawn(async move {
            let made = make_spare(&engine, metering, &pre, limits, permit).await;
            refill.fill(made);
        });
    }
}

/// Whether a store meters fuel and checks epochs.
#[derive(Debug, Clone, Copy)]
struct Metering {
    fuel: bool,
    epoch: bool,
}

/// A store for `state` under `limits`, stopped at `deadline`.
fn new_store(
    engine: &Engine,
    metering: Metering,
    state: GuestState,
    limits: &Limits,
    deadline: Instant,
) -> Store<GuestState> {
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limiter);
    if metering.fuel {
        // Cannot fail: fuel metering is enabled on this engine.
        store.set_fuel(limits.fuel).expect("fuel metering is enabled");
    }
    if metering.epoch {
        set_deadline(&mut store, deadline);
    }
    store
}

/// Every epoch tick the guest yields to the async runtime, so other runs
/// make progress and a run whose task is dropped (cancelled) stops within a
/// tick; past `deadline` it traps with `Interrupt`.
fn set_deadline(store: &mut Store<GuestState>, deadline: Instant) {
    store.epoch_deadline_callback(move |_| {
        Ok(if Instant::now() >= deadline { UpdateDeadline::Interrupt } else { UpdateDeadline::Yield(1) })
    });
    store.set_epoch_deadline(1);
}

/// Instantiates `pre` ahead of its run, in a store with no context: no
/// environment, directories, services or egress. Kept only if the
/// instantiation succeeded within the run's limits and called no import.
async fn make_spare(
    engine: &Engine,
    metering: Metering,
    pre: &ProgramPre,
    limits: Limits,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> spare::Made {
    let timeout = limits.timeout.min(Limits::MAX_TIMEOUT);
    let deadline = Instant::now() + timeout;
    // Nothing here is ever used: a spare whose instantiation calls an
    // import is dropped. Denied all the same.
    let mut wasi = WasiCtxBuilder::new();
    wasi.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
    let state = GuestState::new(
        wasi.build(),
        &limits,
        LogSink::new(limits.log_bytes, None),
        NodeServices::default(),
        EgressHooks(EgressRun::new(Arc::new(EgressPolicy::deny_all()), deadline)),
    );
    let mut store = new_store(engine, metering, state, &limits, deadline);
    let instance = tokio::time::timeout(timeout + EPOCH_TICK * 5, instantiate(pre, &mut store)).await;
    match instance {
        _ if store.data().touched => spare::Made::Touched,
        Ok(Ok(instance)) => spare::Made::Spare(Box::new(spare::Spare { store, permit, instance, limits })),
        _ => spare::Made::Failed,
    }
}

/// How much of a pooled linear memory is reset in place rather than given
/// back to the kernel: with the PAGEMAP_SCAN ioctl, only the pages a run
/// dirtied are copied back from the memory image, so the first 16 MiB
/// (an interpreter's heap image, e.g. the Python node's 13 MiB) stay
/// resident, and a page the next run touches again costs a copy, not a
/// fault; without it, the first 64 KiB are reset whether dirtied or not.
fn keep_resident() -> usize {
    if wasmtime::PoolingAllocationConfig::is_pagemap_scan_available() { 16 << 20 } else { 64 << 10 }
}

/// The pools, sized so that they never refuse what [`Limits`] allow: the
/// per-run counts of [`Limits::default`] times the concurrent runs and
/// spares, memory slots as large as the memory ceiling, one table slot as
/// large as the table-element limit.
fn pooling_config(options: PoolingOptions) -> wasmtime::InstanceAllocationStrategy {
    let limits = Limits::default();
    // A spare holds its slots from its instantiation to the end of the run
    // that takes it.
    let runs = options.concurrent_runs.max(1).saturating_add(options.spares);
    let per_run = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let mut pool = wasmtime::PoolingAllocationConfig::new();
    pool.total_component_instances(runs)
        .total_stacks(runs)
        .total_core_instances(runs.saturating_mul(per_run(limits.instances)))
        .total_memories(runs.saturating_mul(per_run(limits.memories)))
        .total_tables(runs.saturating_mul(per_run(limits.tables)))
        .max_core_instances_per_component(per_run(limits.instances))
        .max_memories_per_component(per_run(limits.memories))
        .max_tables_per_component(per_run(limits.tables))
        .max_memories_per_module(per_run(limits.memories))
        .max_tables_per_module(per_run(limits.tables))
        .table_elements(limits.table_elements)
        .max_memory_size(usize::try_from(options.max_memory_bytes).unwrap_or(usize::MAX))
        // Reuse a slot's pages instead of unmapping them: the pages a run
        // dirtied (found with the PAGEMAP_SCAN ioctl where the kernel has
        // it, Linux 6.7+) are reset in place, up to this much; only what
        // lies past it is given back with `madvise`, whose TLB shootdowns
        // and the next run's page faults cost a multi-threaded host more
        // than the copy.
        .pagemap_scan(wasmtime::Enabled::Auto)
        .linear_memory_keep_resident(keep_resident())
        .table_keep_resident(16 * 1024);
    wasmtime::InstanceAllocationStrategy::Pooling(pool)
}

/// What a guest call returned, before it is judged.
enum Returned {
    Node(Result<String, wfrun_host_api::NodeError>),
    Job(Result<(), ()>),
}

/// The exports an instantiation gave.
enum Instance {
    Node(Node),
    Job(Command),
}

async fn instantiate(pre: &ProgramPre, store: &mut Store<GuestState>) -> wasmtime::Result<Instance> {
    Ok(match pre {
        ProgramPre::Node(pre) => Instance::Node(pre.instantiate_async(store).await?),
        ProgramPre::Job(pre) => Instance::Job(pre.instantiate_async(store).await?),
    })
}

async fn invoke(instance: Instance, store: &mut Store<GuestState>, input: &str) -> wasmtime::Result<Returned> {
    match instance {
        Instance::Node(node) => Ok(Returned::Node(node.wfrun_node_handler().call_run(store, input).await?)),
        Instance::Job(command) => Ok(Returned::Job(command.wasi_cli_run().call_run(store).await?)),
    }
}

/// Fills in the report's status, output and error from what the call did.
fn settle(report: &mut RunReport, outcome: wasmtime::Result<Returned>, limits: &Limits) {
    let failure = match outcome {
        Ok(Returned::Node(Ok(output))) => {
            if output.len() as u64 > limits.output_bytes {
                let e = LimitExceeded::Output { limit: limits.output_bytes, size: output.len() as u64 };
                Some((e.code(), e.to_string()))
            } else {
                match RawValue::from_string(output) {
                    Ok(raw) => {
                        report.output = Some(raw);
                        None
                    }
                    Err(e) => Some((ErrorCode::NodeError, format!("node returned output that is not JSON: {e}"))),
                }
            }
        }
        Ok(Returned::Node(Err(e))) => {
            // Guest-chosen text: bounded before it reaches records and terminals.
            let code = truncate(e.code, MAX_NODE_ERROR_CODE);
            let node_message = truncate(e.message, MAX_NODE_ERROR_MESSAGE);
            let message = format!("node error {code}: {node_message}");
            report.node_error = Some(NodeFailure { code, message: node_message, retryable: e.retryable });
            Some((ErrorCode::NodeError, message))
        }
        Ok(Returned::Job(Ok(()))) => {
            report.exit_code = Some(0);
            None
        }
        Ok(Returned::Job(Err(()))) => {
            report.exit_code = Some(1);
            Some((ErrorCode::NodeError, "job returned an error (exit status 1)".to_owned()))
        }
        Err(e) => match e.downcast_ref::<I32Exit>() {
            // Exiting is how a job ends; a node must return instead.
            Some(I32Exit(code)) if report.kind == Some(GuestKind::Node) => Some((
                ErrorCode::Trap,
                format!("node called exit({code}); a node must return its output or a node error"),
            )),
            Some(I32Exit(0)) => {
                report.exit_code = Some(0);
                None
            }
            Some(I32Exit(code)) => {
                report.exit_code = Some(*code);
                Some((ErrorCode::NodeError, format!("job exited with status {code}")))
            }
            None => Some(classify(&e, limits)),
        },
    };
    match failure {
        None => {
            report.status = RunStatus::Succeeded;
            report.error_code = None;
            report.error_message = None;
        }
        Some((code, mut message)) => {
            // A Rust panic prints its message to stderr and then executes
            // `unreachable`; the trap alone would not say why.
            if code == ErrorCode::Trap
                && let Some(last) = report.stderr.lines().rev().find(|l| !l.trim().is_empty())
            {
                let last: String = last.chars().take(300).collect();
                message = format!("{message} (last stderr line: {last})");
            }
            report.status = RunStatus::Failed;
            report.error_code = Some(code);
            report.error_message = Some(message);
        }
    }
}

/// The longest node error code kept, in bytes.
const MAX_NODE_ERROR_CODE: usize = 256;
/// The longest node error message kept, in bytes.
const MAX_NODE_ERROR_MESSAGE: usize = 16 * 1024;

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("…[truncated]");
    }
    text
}

fn build_wasi(
    program: &Program,
    request: &RunRequest,
    egress: &Arc<EgressRun>,
    stdout: &Capture,
    stderr: &Capture,
) -> Result<wasmtime_wasi::WasiCtx, String> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.stdout(stdout.clone()).stderr(stderr.clone());
    // Sockets only where a `tcp://` or `udp://` rule grants them, and only to
    // the addresses it names; never name lookups (socket rules name
    // addresses). HTTP goes through wasi:http and its own checks.
    let check = egress.clone();
    wasi.allow_tcp(egress.policy().allows_any(Scheme::Tcp))
        .allow_udp(egress.policy().allows_any(Scheme::Udp))
        .allow_ip_name_lookup(false)
        .socket_addr_check(move |addr, use_| {
            let allowed = check.check_socket(addr, use_);
            Box::pin(async move { allowed })
        });
    if program.kind() == GuestKind::Job {
        if request.inherit_stdin {
            wasi.stdin(wasmtime_wasi::cli::stdin());
        }
        wasi.arg(&program.name);
        wasi.args(&request.args);
    }
    for (key, value) in &request.grants.env {
        wasi.env(key, value);
    }
    for dir in &request.grants.dirs {
        let perms = if dir.writable { FsPerms::ReadWrite } else { FsPerms::ReadOnly };
        wasi.preopened_dir(&dir.host, &dir.guest, perms)
            .map_err(|e| format!("cannot grant directory {}: {e:#}", dir.host.display()))?;
    }
    Ok(wasi.build())
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("wfrun-epoch".to_owned())
            .spawn(move || {
                // Parked rather than asleep, so that dropping the sandbox
                // wakes it at once instead of waiting out the tick.
                while !flag.load(Ordering::Relaxed) {
                    std::thread::park_timeout(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        EpochTicker { stop, thread: Some(thread) }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
