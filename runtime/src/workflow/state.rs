//! Durable state as nodes see it: SQLite under a per-run overlay.
//!
//! [`RunOverlay`] holds one workflow run's writes in layers: the writes of
//! node attempts that succeeded (`committed`), and one pending layer per
//! attempt still running. An [`AttemptState`] reads its own pending layer,
//! then the committed writes, then SQLite. When the attempt succeeds its
//! layer joins the committed writes; when it fails or is dropped, the layer
//! is discarded, so a failed or retried attempt leaves no trace. The run's
//! committed writes reach SQLite only if the whole run succeeds, in the
//! transaction that records the run, and only if every key the run read
//! from SQLite still holds the value it read (optimistic concurrency: a
//! run that lost the race is run again, see `Workflow::run`).
//!
//! Quotas are checked on every write against the stored sizes plus *every*
//! layer, including other attempts' pending writes, so nodes running side by
//! side cannot together go past the quota when they all succeed. The stored
//! sizes are read from SQLite once per run, not once per write.

use crate::manifest::StateQuota;
use crate::sandbox::StateAccess;
use crate::store::{StateWrites, Store};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use wfrun_host_api::state::StateError;

/// The longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 512;

#[derive(Debug, Default)]
struct Layers {
    /// Key → size (key + value) as stored when the run first needed them.
    stored: Option<BTreeMap<String, u64>>,
    committed: StateWrites,
    pending: BTreeMap<u64, StateWrites>,
    /// Each key read from the store, with the value first seen: checked
    /// unchanged when the run commits.
    reads: StateWrites,
    next_attempt: u64,
}

/// One run's pending state writes.
#[derive(Debug)]
pub struct RunOverlay {
    store: Arc<Store>,
    workflow: String,
    quota: StateQuota,
    layers: Mutex<Layers>,
}

impl RunOverlay {
    /// An empty overlay over `workflow`'s state in `store`.
    pub fn new(store: Arc<Store>, workflow: String, quota: StateQuota) -> Self {
        RunOverlay { store, workflow, quota, layers: Mutex::default() }
    }

    /// The writes to commit if the run succeeds.
    pub fn take_writes(&self) -> StateWrites {
        std::mem::take(&mut self.layers.lock().unwrap().committed)
    }

    /// The keys read from the store, with the values seen.
    pub fn take_reads(&self) -> StateWrites {
        std::mem::take(&mut self.layers.lock().unwrap().reads)
    }
}

/// One node attempt's view of state. Dropping it without [`commit`](Self::commit)
/// discards its writes.
#[derive(Debug)]
pub struct AttemptState {
    run: Arc<RunOverlay>,
    id: u64,
}

impl RunOverlay {
    /// Every key with its size as this attempt would see it: stored, then
    /// committed, then pending layers (`all_pending`: every attempt's, for
    /// quota checks; else only `attempt`'s own).
    fn sizes(
        &self,
        attempt: u64,
        all_pending: bool,
    ) -> wasmtime::Result<(std::sync::MutexGuard<'_, Layers>, BTreeMap<String, u64>)> {
        let mut layers = self.layers.lock().unwrap();
        if layers.stored.is_none() {
            layers.stored = Some(
                self.store
                    .state_sizes(&self.workflow)
                    .map_err(|e| wasmtime::Error::new(crate::sandbox::HostFault(e.to_string())))?,
            );
        }
        let mut sizes = layers.stored.clone().unwrap_or_default();
        apply(&mut sizes, &layers.committed);
        for (id, writes) in &layers.pending {
            if all_pending && *id != attempt {
                apply(&mut sizes, writes);
            }
        }
        if let Some(own) = layers.pending.get(&attempt) {
            apply(&mut sizes, own);
        }
        Ok((layers, sizes))
    }
}

impl AttemptState {
    /// A fresh attempt over `run`.
    pub fn new(run: Arc<RunOverlay>) -> Self {
        let id = {
            let mut layers = run.layers.lock().unwrap();
            let id = layers.next_attempt;
            layers.next_attempt += 1;
            layers.pending.insert(id, StateWrites::new());
            id
        };
        AttemptState { run, id }
    }

    /// Keeps this attempt's writes: the attempt succeeded.
    pub fn commit(&self) {
        let mut layers = self.run.layers.lock().unwrap();
        if let Some(writes) = layers.pending.remove(&self.id) {
            layers.committed.extend(writes);
        }
    }
}

impl Drop for AttemptState {
    fn drop(&mut self) {
        if let Ok(mut layers) = self.run.layers.lock() {
            layers.pending.remove(&self.id);
        }
    }
}

fn check_key(key: &str) -> Result<(), StateError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(StateError::InvalidKey(format!(
            "keys must be 1 to {MAX_KEY_BYTES} bytes; this one is {}",
            key.len()
        )));
    }
    Ok(())
}

fn apply(sizes: &mut BTreeMap<String, u64>, writes: &StateWrites) {
    for (key, value) in writes {
        match value {
            Some(value) => sizes.insert(key.clone(), (key.len() + value.len()) as u64),
            None => sizes.remove(key),
        };
    }
}

impl StateAccess for AttemptState {
    fn get(&self, key: &str) -> wasmtime::Result<Result<Option<Vec<u8>>, StateError>> {
        if let Err(e) = check_key(key) {
            return Ok(Err(e));
        }
        {
            let layers = self.run.layers.lock().unwrap();
            let own = layers.pending.get(&self.id);
            if let Some(value) = own.and_then(|w| w.get(key)).or_else(|| layers.committed.get(key)) {
                return Ok(Ok(value.clone()));
            }
        }
        let stored = self.run.store.state_get(&self.run.workflow, key);
        let value = stored.map_err(|e| wasmtime::Error::new(crate::sandbox::HostFault(e.to_string())))?;
        self.run.layers.lock().unwrap().reads.entry(key.to_owned()).or_insert_with(|| value.clone());
        Ok(Ok(value))
    }

    fn set(&self, key: &str, value: Vec<u8>) -> wasmtime::Result<Result<(), StateError>> {
        if let Err(e) = check_key(key) {
            return Ok(Err(e));
        }
        let quota = &self.run.quota;
        if value.len() as u64 > quota.max_value_bytes {
            return Ok(Err(StateError::QuotaExceeded(format!(
                "max_value_bytes: a value of {} bytes is over the limit of {}",
                value.len(),
                quota.max_value_bytes
            ))));
        }
        let (mut layers, mut sizes) = self.run.sizes(self.id, true)?;
        sizes.insert(key.to_owned(), (key.len() + value.len()) as u64);
        if sizes.len() as u64 > quota.max_keys {
            return Ok(Err(StateError::QuotaExceeded(format!("max_keys: the limit is {} keys", quota.max_keys))));
        }
        let total: u64 = sizes.values().sum();
        if total > quota.max_total_bytes {
            return Ok(Err(StateError::QuotaExceeded(format!(
                "max_total_bytes: {total} bytes would be over the limit of {}",
                quota.max_total_bytes
            ))));
        }
        layers.pending.entry(self.id).or_default().insert(key.to_owned(), Some(value));
        Ok(Ok(()))
    }

    fn delete(&self, key: &str) -> wasmtime::Result<Result<(), StateError>> {
        if let Err(e) = check_key(key) {
            return Ok(Err(e));
        }
        self.run.layers.lock().unwrap().pending.entry(self.id).or_default().insert(key.to_owned(), None);
        Ok(Ok(()))
    }

    fn list_keys(&self, prefix: &str) -> wasmtime::Result<Result<Vec<String>, StateError>> {
        let (layers, sizes) = self.run.sizes(self.id, false)?;
        drop(layers);
        // BTreeMap keys come out in byte order.
        Ok(Ok(sizes.into_keys().filter(|k| k.starts_with(prefix)).collect()))
    }
}
