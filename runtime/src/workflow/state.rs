//! Durable state as nodes see it: SQLite under two overlays.
//!
//! [`RunOverlay`] holds the writes of one workflow run; they reach SQLite
//! only when the run succeeds (the store applies them in the transaction that
//! records the run). [`AttemptState`] holds one node attempt's writes on top
//! of that and merges them into the run's only if the attempt succeeds, so a
//! failed or retried attempt leaves no trace. Reads see attempt, then run,
//! then SQLite. Quotas are checked against that combined view on every
//! write.

use super::StateQuota;
use crate::sandbox::StateAccess;
use crate::store::{StateWrites, Store};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use wfrun_host_api::state::StateError;

/// The longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 512;

/// One run's pending state writes.
#[derive(Debug)]
pub struct RunOverlay {
    store: Arc<Store>,
    workflow: String,
    quota: StateQuota,
    writes: Mutex<StateWrites>,
}

impl RunOverlay {
    /// An empty overlay over `workflow`'s state in `store`.
    pub fn new(store: Arc<Store>, workflow: String, quota: StateQuota) -> Self {
        RunOverlay { store, workflow, quota, writes: Mutex::default() }
    }

    /// The writes to commit if the run succeeds.
    pub fn take_writes(&self) -> StateWrites {
        std::mem::take(&mut self.writes.lock().unwrap())
    }
}

/// One node attempt's view of state.
#[derive(Debug)]
pub struct AttemptState {
    run: Arc<RunOverlay>,
    writes: Mutex<StateWrites>,
}

impl AttemptState {
    /// A fresh attempt over `run`.
    pub fn new(run: Arc<RunOverlay>) -> Self {
        AttemptState { run, writes: Mutex::default() }
    }

    /// Keeps this attempt's writes: the attempt succeeded.
    pub fn commit(&self) {
        let writes = std::mem::take(&mut *self.writes.lock().unwrap());
        self.run.writes.lock().unwrap().extend(writes);
    }

    /// Every key with its size (key + value) as this attempt would see it.
    fn sizes(&self) -> wasmtime::Result<BTreeMap<String, u64>> {
        let mut sizes = self.run.store.state_sizes(&self.run.workflow)?;
        for layer in [&*self.run.writes.lock().unwrap(), &*self.writes.lock().unwrap()] {
            for (key, value) in layer {
                match value {
                    Some(value) => sizes.insert(key.clone(), (key.len() + value.len()) as u64),
                    None => sizes.remove(key),
                };
            }
        }
        Ok(sizes)
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

impl StateAccess for AttemptState {
    fn get(&self, key: &str) -> wasmtime::Result<Result<Option<Vec<u8>>, StateError>> {
        if let Err(e) = check_key(key) {
            return Ok(Err(e));
        }
        for layer in [&*self.writes.lock().unwrap(), &*self.run.writes.lock().unwrap()] {
            if let Some(value) = layer.get(key) {
                return Ok(Ok(value.clone()));
            }
        }
        Ok(Ok(self.run.store.state_get(&self.run.workflow, key)?))
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
        let mut sizes = self.sizes()?;
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
        self.writes.lock().unwrap().insert(key.to_owned(), Some(value));
        Ok(Ok(()))
    }

    fn delete(&self, key: &str) -> wasmtime::Result<Result<(), StateError>> {
        if let Err(e) = check_key(key) {
            return Ok(Err(e));
        }
        self.writes.lock().unwrap().insert(key.to_owned(), None);
        Ok(Ok(()))
    }

    fn list_keys(&self, prefix: &str) -> wasmtime::Result<Result<Vec<String>, StateError>> {
        // BTreeMap keys come out in byte order.
        Ok(Ok(self.sizes()?.into_keys().filter(|k| k.starts_with(prefix)).collect()))
    }
}
