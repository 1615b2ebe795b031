//! One runner for `wfrun exec` and the daemon: prepare a bundle, then run it.
//!
//! [`Runner::prepare`] reads a bundle file, verifies its signature against
//! the [`TrustPolicy`] before anything is compiled, and loads it (through
//! the sandbox's compiled-artifact cache) into a [`Prepared`] program that
//! can run any number of times. [`Runner::run`] admits the program's plan
//! through the operator's [`Policy`], executes it and records it. A bundle
//! refused at any step, or a run refused before its guest starts, is a
//! [`Rejection`], recorded the same way whoever asked ([`Runner::reject`]).
//!
//! [`ProgramCache`] keeps prepared programs for a long-lived host, keyed by
//! bundle path and checked against the file's identity (device, inode,
//! size, modification and change times, and the same for `BUNDLE.sig`) and
//! digest: a trigger of an unchanged bundle neither reads nor verifies nor
//! loads it again, and a changed file is picked up at its next trigger.

use crate::bundle::memo::DigestMemo;
use crate::bundle::{Bundle, BundleError, Remembered};
use crate::outcome::{ErrorCode, GuestKind, RunReport, new_run_id};
use crate::policy::{Admitted, Policy, TrustPolicy};
use crate::sandbox::Sandbox;
use crate::store::{NewRun, Store, StoreError};
use crate::workflow::{Execution, Workflow};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Runs bundles in one sandbox, recording them in one store.
#[derive(Debug, Clone)]
pub struct Runner {
    sandbox: Arc<Sandbox>,
    store: Option<Arc<Store>>,
}

/// A bundle read, verified and loaded: ready to run many times.
#[derive(Debug)]
pub struct Prepared {
    workflow: Arc<Workflow>,
    path: PathBuf,
    signer: Option<String>,
}

impl Prepared {
    /// The loaded workflow (a plain component is a one-node workflow).
    pub fn workflow(&self) -> &Arc<Workflow> {
        &self.workflow
    }

    /// Workflow, node or job.
    pub fn kind(&self) -> GuestKind {
        self.workflow.kind()
    }

    /// The bundle's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key id that signed it, if it is signed.
    pub fn signer(&self) -> Option<&str> {
        self.signer.as_deref()
    }
}

/// Why a bundle or a run was refused before the guest started, with its
/// stable code and detail.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// `invalid_bundle`, `invalid_input`, or `host_error`.
    pub code: ErrorCode,
    /// The finer reason, e.g. `signature_missing`, `not_wasm`, `over_ceiling`.
    pub detail: &'static str,
    /// What happened, naming the file.
    pub message: String,
    /// `sha256:<hex>` of the bundle, when it could be read.
    pub digest: Option<String>,
    /// What the bundle is, when it got that far.
    pub kind: Option<GuestKind>,
    /// The workflow's name, when known; else the bundle's file stem.
    pub workflow: Option<String>,
}

impl Rejection {
    /// An `invalid_bundle` rejection (`digest`: the bundle's, once read).
    pub fn invalid_bundle(detail: &'static str, message: String, digest: Option<String>) -> Rejection {
        Rejection { code: ErrorCode::InvalidBundle, detail, message, digest, kind: None, workflow: None }
    }

    /// A bundle file that cannot be used: `invalid_bundle`, or
    /// `host_error` when reading it failed for the host's own reasons.
    pub fn bundle(error: &BundleError, digest: Option<String>) -> Rejection {
        let code = if error.is_host_fault() { ErrorCode::HostError } else { ErrorCode::InvalidBundle };
        Rejection { code, ..Rejection::invalid_bundle(error.detail(), error.to_string(), digest) }
    }

    /// An `invalid_input` rejection of a prepared bundle.
    pub fn input(prepared: &Prepared, message: impl Into<String>) -> Rejection {
        Rejection {
            code: ErrorCode::InvalidInput,
            detail: "invalid_input",
            message: message.into(),
            digest: Some(prepared.workflow.digest().to_owned()),
            kind: Some(prepared.kind()),
            workflow: Some(prepared.workflow.name().to_owned()),
        }
    }

    /// The report of the refused run.
    pub fn report(&self, run_id: String) -> RunReport {
        RunReport {
            run_id,
            kind: self.kind,
            workflow: self.workflow.clone(),
            bundle_digest: self.digest.clone(),
            ..RunReport::rejected_with(self.code, self.detail, self.message.clone())
        }
    }
}

impl Runner {
    /// A runner over `sandbox`, recording in `store` if given.
    pub fn new(sandbox: Arc<Sandbox>, store: Option<Arc<Store>>) -> Runner {
        Runner { sandbox, store }
    }

    /// The sandbox programs run in.
    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    /// Reads the bundle at `path`, checks its signature against `trust`
    /// (before anything is compiled), and loads it.
    ///
    /// With an artifact cache, a plain component that is unchanged since it
    /// was last read, and whose artifact is cached, is not read at all: its
    /// remembered digest ([`crate::bundle::memo`]) is checked against its
    /// detached signature, if any, and leads to the artifact.
    pub fn prepare(&self, path: &Path, trust: &TrustPolicy) -> Result<Prepared, Rejection> {
        if let Some(remembered) = self.memo().and_then(|memo| Remembered::recall(path, &memo)) {
            let signer =
                trust.verify_remembered(&remembered).map_err(|e| Rejection::bundle(&e, Some(remembered.digest())))?;
            // A program that does not load from the cache is loaded again
            // from the bundle below, which says why it fails.
            if let Some(Ok(workflow)) = Workflow::load_remembered(&self.sandbox, &remembered) {
                return Ok(Prepared { workflow: Arc::new(workflow), path: path.to_path_buf(), signer });
            }
        }
        let bundle = self.read(path).map_err(|e| Rejection::bundle(&e, None))?;
        self.prepare_bundle(&bundle, trust)
    }

    /// The remembered bundle digests beside the artifact cache, if there is
    /// one.
    fn memo(&self) -> Option<DigestMemo> {
        self.sandbox.cache_dir().map(|dir| DigestMemo::new(dir.join("digests")))
    }

    /// Reads the bundle at `path`; with an artifact cache, an unchanged
    /// file's digest is remembered beside it rather than computed again
    /// ([`crate::bundle::memo`]).
    pub fn read(&self, path: &Path) -> Result<Bundle, crate::bundle::BundleError> {
        match self.memo() {
            Some(memo) => Bundle::read_remembering(path, &memo),
            None => Bundle::read(path),
        }
    }

    /// [`prepare`](Self::prepare) for a bundle already read.
    pub fn prepare_bundle(&self, bundle: &Bundle, trust: &TrustPolicy) -> Result<Prepared, Rejection> {
        let signer = trust.verify(bundle).map_err(|e| Rejection::bundle(&e, Some(bundle.digest())))?;
        let workflow = Workflow::load(&self.sandbox, bundle)
            .map_err(|e| Rejection::invalid_bundle(e.detail(), e.to_string(), Some(bundle.digest())))?;
        Ok(Prepared { workflow: Arc::new(workflow), path: bundle.path().to_path_buf(), signer })
    }

    /// Runs `prepared` once under `policy` and records it. A plan the
    /// policy refuses is recorded as a rejected run. Fails only if the
    /// store does; everything a guest does ends up in the report.
    pub async fn run(
        &self,
        prepared: &Prepared,
        policy: &Policy,
        execution: Execution,
    ) -> Result<RunReport, StoreError> {
        match Runner::admit(prepared, policy) {
            Ok(admitted) => self.run_admitted(prepared, &admitted, execution).await,
            Err(rejection) => self.reject(&prepared.path, &rejection, &execution),
        }
    }

    /// What `policy` grants `prepared`'s plan, or why it refuses it: the
    /// first half of [`run`](Self::run), for a host that runs one program
    /// under one policy many times (a daemon trigger's runs).
    pub fn admit(prepared: &Prepared, policy: &Policy) -> Result<Admitted, Rejection> {
        let workflow = &prepared.workflow;
        policy.admit(workflow.plan()).map_err(|refused| Rejection {
            kind: Some(workflow.kind()),
            workflow: Some(workflow.name().to_owned()),
            ..Rejection::invalid_bundle(
                refused.detail(),
                format!("{}: {refused}", prepared.path.display()),
                Some(workflow.digest().to_owned()),
            )
        })
    }

    /// Runs `prepared` once with what [`Runner::admit`] granted it, and
    /// records it: the second half of [`run`](Self::run).
    pub async fn run_admitted(
        &self,
        prepared: &Prepared,
        admitted: &Admitted,
        execution: Execution,
    ) -> Result<RunReport, StoreError> {
        for (node, over) in &admitted.capped {
            tracing::debug!(
                "{}: node `{node}` asks for {} {}; held to the ceiling of {}",
                prepared.path.display(),
                over.key.name(),
                over.requested,
                over.ceiling
            );
        }
        prepared.workflow.run(&self.sandbox, self.store.as_ref(), &admitted.grant, execution).await
    }

    /// Records a run refused before its guest started and returns its
    /// report (with the execution's run id and job, if it has them).
    pub fn reject(&self, path: &Path, rejection: &Rejection, execution: &Execution) -> Result<RunReport, StoreError> {
        let report = rejection.report(execution.run_id.clone().unwrap_or_else(new_run_id));
        if let Some(store) = &self.store {
            let workflow = rejection.workflow.clone().unwrap_or_else(|| {
                path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "-".to_owned())
            });
            let new = NewRun {
                id: report.run_id.clone(),
                workflow,
                version: "-".to_owned(),
                bundle_path: path.display().to_string(),
                bundle_digest: rejection.digest.clone().unwrap_or_default(),
                kind: rejection.kind,
                job: execution.job.clone(),
            };
            store.record_rejected(&new, &report)?;
        }
        Ok(report)
    }
}

/// What identifies a file's contents without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    device: u64,
    inode: u64,
    len: u64,
    modified_ns: i128,
    changed_ns: i128,
}

impl FileIdentity {
    /// The identity of `path`; `None` if there is no such file.
    fn of(path: &Path) -> std::io::Result<Option<FileIdentity>> {
        let metadata = match std::fs::metadata(path) {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Ok(Some(FileIdentity {
                device: metadata.dev(),
                inode: metadata.ino(),
                len: metadata.len(),
                modified_ns: i128::from(metadata.mtime()) * 1_000_000_000 + i128::from(metadata.mtime_nsec()),
                changed_ns: i128::from(metadata.ctime()) * 1_000_000_000 + i128::from(metadata.ctime_nsec()),
            }))
        }
        #[cfg(not(unix))]
        {
            let modified = metadata
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i128);
            Ok(Some(FileIdentity { device: 0, inode: 0, len: metadata.len(), modified_ns: modified, changed_ns: 0 }))
        }
    }
}

/// The identities a prepared program was made from: the bundle and its
/// detached signature (if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identities {
    bundle: FileIdentity,
    signature: Option<FileIdentity>,
}

impl Identities {
    fn of(path: &Path) -> Option<Identities> {
        let bundle = FileIdentity::of(path).ok().flatten()?;
        let signature = FileIdentity::of(&crate::bundle::signature::detached_path(path)).ok()?;
        Some(Identities { bundle, signature })
    }
}

struct CacheEntry {
    identities: Identities,
    digest: String,
    prepared: Arc<Prepared>,
}

/// Prepared programs of a long-lived host, by bundle path. A cache serves
/// one trust policy: a kept program was verified under the policy it was
/// first prepared with (the daemon's, fixed for its life).
#[derive(Default)]
pub struct ProgramCache {
    entries: Mutex<HashMap<PathBuf, CacheEntry>>,
    hits: AtomicU64,
    loads: AtomicU64,
}

impl std::fmt::Debug for ProgramCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgramCache").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

/// How a [`ProgramCache`] has been used, for `wfrun status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheStats {
    /// Programs kept.
    pub programs: u64,
    /// Triggers served from a kept program, without reading the bundle.
    pub hits: u64,
    /// Bundles read, verified and loaded.
    pub loads: u64,
    /// Runs of the kept programs served by an instance made ahead of them
    /// (`[daemon] spare_instances`).
    #[serde(default)]
    pub spares_taken: u64,
}

impl ProgramCache {
    /// The prepared program of the bundle at `path`: the kept one if the
    /// file (and its `.sig`) are unchanged, else read, verified against
    /// `trust` and loaded by `runner`. A file that changed but holds the
    /// same bytes is read and hashed, not loaded again.
    pub fn prepare(&self, runner: &Runner, path: &Path, trust: &TrustPolicy) -> Result<Arc<Prepared>, Rejection> {
        let identities = Identities::of(path);
        if let Some(identities) = identities {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(entry) = entries.get(path).filter(|e| e.identities == identities) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(entry.prepared.clone());
            }
        }
        let bundle = runner.read(path).map_err(|e| {
            self.forget(path);
            Rejection::bundle(&e, None)
        })?;
        let digest = bundle.digest();
        {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            // Touched, same bytes, same signature file: nothing to redo.
            if let (Some(identities), Some(entry)) = (identities, entries.get_mut(path))
                && entry.digest == digest
                && entry.identities.signature == identities.signature
            {
                entry.identities = identities;
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(entry.prepared.clone());
            }
        }
        self.loads.fetch_add(1, Ordering::Relaxed);
        let prepared = runner.prepare_bundle(&bundle, trust);
        // Reading the bundle, and compiling it if it was not cached, freed
        // far more memory than a run does (hundreds of MiB for the Python
        // hello node), spread over the allocator's arenas: given back now,
        // not kept for the daemon's life.
        drop(bundle);
        crate::store::release_free_heap();
        let prepared = match prepared {
            Ok(prepared) => Arc::new(prepared),
            Err(rejection) => {
                self.forget(path);
                return Err(rejection);
            }
        };
        if let Some(identities) = identities {
            let entry = CacheEntry { identities, digest, prepared: prepared.clone() };
            self.entries.lock().unwrap_or_else(|p| p.into_inner()).insert(path.to_path_buf(), entry);
        }
        Ok(prepared)
    }

    fn forget(&self, path: &Path) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).remove(path);
    }

    /// Drops every kept program whose path is not in `keep`.
    pub fn retain(&self, keep: impl Fn(&Path) -> bool) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).retain(|path, _| keep(path));
    }

    /// Counts, for `wfrun status`.
    pub fn stats(&self) -> CacheStats {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        CacheStats {
            programs: entries.len() as u64,
            hits: self.hits.load(Ordering::Relaxed),
            loads: self.loads.load(Ordering::Relaxed),
            spares_taken: entries.values().map(|e| e.prepared.workflow().spares_taken()).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::EngineOptions;

    fn runner() -> Runner {
        Runner::new(Arc::new(Sandbox::new(EngineOptions::default()).unwrap()), None)
    }

    #[test]
    fn refused_bundles_are_never_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.wasm");
        let runner = runner();
        let cache = ProgramCache::default();
        let trust = TrustPolicy::default();
        // An empty component exports nothing: every load is refused, and
        // refusals are never kept, so each attempt is a load. (Kept
        // programs are tested with real guests in tests/integration/runner.rs.)
        std::fs::write(&path, wat::parse_str("(component)").unwrap()).unwrap();
        let refused = cache.prepare(&runner, &path, &trust).unwrap_err();
        assert_eq!(refused.detail, "no_known_world");
        assert_eq!(cache.stats().loads, 1);
        assert!(cache.prepare(&runner, &path, &trust).is_err());
        assert_eq!(cache.stats(), CacheStats { programs: 0, hits: 0, loads: 2, spares_taken: 0 });
        // A missing file is refused as such.
        let missing = cache.prepare(&runner, &dir.path().join("gone.wasm"), &trust).unwrap_err();
        assert_eq!(missing.detail, "missing");
    }
}
