//! The uploader: drains the outbox to the receiver and sends heartbeats.
//!
//! Batches go oldest first, each at most `batch_reports` reports and
//! `batch_bytes` bytes. What happens to a batch depends on the answer:
//! - **2xx**: every report in it is acknowledged and deleted from the
//!   outbox, then the next batch goes at once.
//! - **400, 413, 422**: something in the batch is refused. The batch is
//!   split in halves until the refused report is alone; that one goes to
//!   the dead letters (kept, counted, shown in status) and the rest are
//!   delivered.
//! - **408, 429, 5xx**, timeouts and connection errors: nothing is lost; the
//!   batch is tried again after the receiver's `Retry-After` (seconds or an
//!   HTTP date, at most `retry_after_max`) or else after an exponential
//!   backoff with full jitter (`backoff_min` doubling to `backoff_max`).
//!   Other answers (401, 403, 404: a configuration problem) back off the
//!   same way and say so in status.
//!
//! Heartbeats go every `heartbeat` (jittered) while the receiver answers,
//! and at once after it comes back; they are never queued. The uploader
//! never blocks a run: runs write to the outbox, and only this task reads
//! it.

use super::backoff::{full_jitter, retry_after};
use super::{
    EndpointError, HEARTBEAT_PATH, Heartbeat, REPORTS_PATH, ReportSettings, UploadAnswer, UploadBatch, endpoint_url,
};
use crate::egress::exchange::{Answer, exchange};
use crate::store::{Queued, Store};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Notify;

/// The largest answer read from the receiver.
const MAX_ANSWER: u64 = 64 * 1024;

/// Where the uploader stands, for `wfrun status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadState {
    /// The endpoint.
    pub endpoint: String,
    /// When a batch was last acknowledged.
    pub last_upload: Option<String>,
    /// The last failure: (code, message). Cleared by a success.
    pub last_error: Option<(String, String)>,
    /// When the next try is due, while backing off.
    pub next_retry: Option<String>,
    /// Failures in a row.
    pub failures: u32,
    /// Reports acknowledged by this process.
    pub delivered: u64,
    /// Reports this process moved to the dead letters.
    pub dead_lettered: u64,
    /// When a heartbeat was last acknowledged.
    pub last_heartbeat: Option<String>,
}

/// Why the uploader cannot start.
#[derive(Debug, thiserror::Error)]
pub enum UploaderError {
    /// The endpoint is unusable.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The token file cannot be read.
    #[error("report.token_file {}: {source}", path.display())]
    Token {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What one batch's answer means.
enum Outcome {
    Acknowledged,
    Refused(http::StatusCode, String),
    Retry { code: String, message: String, after: Option<Duration> },
}

/// Drains one store's outbox to one receiver.
#[derive(Debug)]
pub struct Uploader {
    store: Arc<Store>,
    settings: ReportSettings,
    device_id: String,
    token: Option<String>,
    reports: http::Uri,
    heartbeats: http::Uri,
    state: Mutex<UploadState>,
    /// Notified when there may be something to send.
    pub wake: Notify,
}

fn ids(batch: &[Queued]) -> Vec<String> {
    batch.iter().map(|q| q.report_id.clone()).collect()
}

impl Uploader {
    /// An uploader of `store`'s outbox under `settings`, for device
    /// `device_id`. The token file is read now.
    pub fn new(store: Arc<Store>, settings: ReportSettings, device_id: String) -> Result<Uploader, UploaderError> {
        let reports = endpoint_url(&settings.endpoint, REPORTS_PATH)?;
        let heartbeats = endpoint_url(&settings.endpoint, HEARTBEAT_PATH)?;
        let token = match &settings.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| UploaderError::Token { path: path.clone(), source })?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let state = Mutex::new(UploadState { endpoint: settings.endpoint.clone(), ..UploadState::default() });
        Ok(Uploader { store, settings, device_id, token, reports, heartbeats, state, wake: Notify::new() })
    }

    /// Where it stands.
    pub fn state(&self) -> UploadState {
        self.state.lock().unwrap().clone()
    }

    async fn post(&self, url: &http::Uri, body: Vec<u8>) -> Result<Answer, String> {
        let mut headers = vec![(http::header::CONTENT_TYPE, "application/json".to_owned())];
        if let Some(token) = &self.token {
            headers.push((http::header::AUTHORIZATION, format!("Bearer {token}")));
        }
        let send = exchange(http::Method::POST, url, &headers, body.into(), self.settings.timeout, MAX_ANSWER);
        match tokio::time::timeout(self.settings.timeout, send).await {
            Ok(answer) => answer.map_err(|e| e.to_string()),
            Err(_) => Err(format!("{url}: no answer within {:?}", self.settings.timeout)),
        }
    }

    async fn send(&self, batch: &[Queued]) -> Outcome {
        let reports = batch.iter().map(|q| serde_json::from_str(&q.body).unwrap_or(serde_json::Value::Null)).collect();
        let body = serde_json::to_vec(&UploadBatch { device_id: self.device_id.clone(), reports }).expect("serialises");
        let answer = match self.post(&self.reports, body).await {
            Ok(answer) => answer,
            Err(message) => return Outcome::Retry { code: "unreachable".into(), message, after: None },
        };
        let status = answer.status;
        let text = String::from_utf8_lossy(&answer.body[..answer.body.len().min(500)]).into_owned();
        if status.is_success() {
            return Outcome::Acknowledged;
        }
        if matches!(status.as_u16(), 400 | 413 | 422) {
            return Outcome::Refused(status, text);
        }
        let after = answer
            .headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, SystemTime::now(), self.settings.retry_after_max));
        let code = match status.as_u16() {
            401 | 403 => "unauthorized".to_owned(),
            code => format!("http_{code}"),
        };
        Outcome::Retry { code, message: format!("{}: {status}: {text}", self.reports), after }
    }

    /// Sends what the outbox holds, batch after batch, until it is empty
    /// (`Ok`, with the count acknowledged) or the receiver must be tried
    /// again later (`Err`, with the wait).
    pub async fn drain(&self) -> Result<u64, Duration> {
        let mut delivered = 0;
        loop {
            let batch = self
                .store
                .outbox_batch(self.settings.batch_reports, self.settings.batch_bytes)
                .map_err(|e| self.failed("outbox", e.to_string(), None))?;
            if batch.is_empty() {
                return Ok(delivered);
            }
            // Halves of a refused batch wait here, the first half on top.
            let mut parts = vec![batch];
            while let Some(part) = parts.pop() {
                match self.send(&part).await {
                    Outcome::Acknowledged => {
                        self.store.acknowledge(&ids(&part)).map_err(|e| self.failed("outbox", e.to_string(), None))?;
                        delivered += part.len() as u64;
                        let mut state = self.state.lock().unwrap();
                        state.delivered += part.len() as u64;
                        state.last_upload = Some(crate::store::now());
                        (state.failures, state.last_error, state.next_retry) = (0, None, None);
                    }
                    Outcome::Refused(status, reason) if part.len() == 1 => {
                        let code = format!("rejected_{}", status.as_u16());
                        tracing::warn!(code, "report {} refused by the receiver: {reason}", part[0].report_id);
                        self.store
                            .dead_letter(&part[0].report_id, &code, &reason)
                            .map_err(|e| self.failed("outbox", e.to_string(), None))?;
                        self.state.lock().unwrap().dead_lettered += 1;
                    }
                    Outcome::Refused(..) => {
                        let mut first = part;
                        let second = first.split_off(first.len() / 2);
                        parts.push(second);
                        parts.push(first);
                    }
                    Outcome::Retry { code, message, after } => return Err(self.failed(&code, message, after)),
                }
            }
        }
    }

    /// Records a failure; the wait before the next try.
    fn failed(&self, code: &str, message: String, after: Option<Duration>) -> Duration {
        let mut state = self.state.lock().unwrap();
        state.failures += 1;
        let wait =
            after.unwrap_or_else(|| full_jitter(state.failures, self.settings.backoff_min, self.settings.backoff_max));
        tracing::debug!(code, "report upload: {message}; next try in {wait:?}");
        state.last_error = Some((code.to_owned(), message));
        state.next_retry = Some(humantime::format_rfc3339_millis(SystemTime::now() + wait).to_string());
        wait
    }

    /// Sends one heartbeat; whether the receiver took it.
    pub async fn heartbeat(&self, heartbeat: &Heartbeat) -> bool {
        let body = serde_json::to_vec(heartbeat).expect("heartbeats serialise");
        match self.post(&self.heartbeats, body).await {
            Ok(answer) if answer.status.is_success() => {
                self.state.lock().unwrap().last_heartbeat = Some(crate::store::now());
                true
            }
            Ok(answer) => {
                tracing::debug!("heartbeat: {}", answer.status);
                false
            }
            Err(e) => {
                tracing::debug!("heartbeat: {e}");
                false
            }
        }
    }

    /// Drains and heartbeats until the task is dropped. `heartbeat` makes
    /// each heartbeat's body when it is due.
    pub async fn run(self: Arc<Self>, heartbeat: impl Fn() -> Heartbeat) {
        let interval = self.settings.heartbeat;
        let mut next_heartbeat = Instant::now();
        loop {
            let woken = self.wake.notified();
            match self.drain().await {
                Err(wait) => {
                    // Offline or refused: no heartbeats until it answers;
                    // the first one after says everything.
                    next_heartbeat = Instant::now();
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Ok(_) => self.state.lock().unwrap().next_retry = None,
            }
            if Instant::now() >= next_heartbeat {
                self.heartbeat(&heartbeat()).await;
                let mut jitter = [0u8; 2];
                let _ = getrandom::fill(&mut jitter);
                let spread = (interval / 10).mul_f64(f64::from(u16::from_le_bytes(jitter)) / f64::from(u16::MAX));
                next_heartbeat = Instant::now() + interval - interval / 20 + spread;
            }
            // New reports wake the uploader; a slow poll catches anything
            // written by another process.
            let until = next_heartbeat.min(Instant::now() + Duration::from_secs(2));
            tokio::select! {
                () = tokio::time::sleep_until(until.into()) => {}
                () = woken => {}
            }
        }
    }
}

/// The answer a receiver gives to an accepted batch, parsed if it parses.
pub fn parse_answer(body: &[u8]) -> Option<UploadAnswer> {
    serde_json::from_slice(body).ok()
}
