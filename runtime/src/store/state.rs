//! Durable workflow state: key-value pairs scoped to a workflow's name.
//!
//! Nodes never write here directly: their writes collect in the
//! executor's overlay and reach the `state` table only with the record of a
//! run that succeeded ([`Store::finish_run`](super::Store::finish_run)).

use super::{Store, StoreError};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;

/// State writes to apply when a run succeeds: key → value, or `None` to delete.
pub type StateWrites = BTreeMap<String, Option<Vec<u8>>>;

impl Store {
    /// The value of `key` in `workflow`'s state.
    pub fn state_get(&self, workflow: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        use rusqlite::types::Value;
        // A value written as TEXT by another tool is its bytes; any other
        // SQLite type is the host's problem, reported as a store error.
        let value = self.read(|conn| {
            conn.query_row("SELECT value FROM state WHERE workflow = ?1 AND key = ?2", params![workflow, key], |r| {
                r.get::<_, Value>(0)
            })
            .optional()
        })?;
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Blob(bytes)) => Ok(Some(bytes)),
            Some(Value::Text(text)) => Ok(Some(text.into_bytes())),
            Some(other) => Err(StoreError::Corrupt {
                what: format!("state {workflow:?} key {key:?}"),
                reason: format!("a value of SQLite type {}, not bytes", other.data_type()),
            }),
        }
    }

    /// Every key of `workflow`'s state with its stored size (key + value).
    pub fn state_sizes(&self, workflow: &str) -> Result<BTreeMap<String, u64>, StoreError> {
        self.read(|conn| {
            // Bytes, not characters: a TEXT key's length() counts characters.
            let mut stmt =
                conn.prepare("SELECT key, length(CAST(key AS BLOB)) + length(value) FROM state WHERE workflow = ?1")?;
            stmt.query_map(params![workflow], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?.collect()
        })
    }
}

/// Applies `writes` to `workflow`'s state inside `tx`.
pub(super) fn apply(tx: &Connection, workflow: &str, writes: &StateWrites) -> rusqlite::Result<()> {
    for (key, value) in writes {
        match value {
            Some(value) => tx
                .prepare_cached(
                    "INSERT INTO state (workflow, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (workflow, key) DO UPDATE SET value = excluded.value",
                )?
                .execute(params![workflow, key, value])?,
            None => tx
                .prepare_cached("DELETE FROM state WHERE workflow = ?1 AND key = ?2")?
                .execute(params![workflow, key])?,
        };
    }
    Ok(())
}
