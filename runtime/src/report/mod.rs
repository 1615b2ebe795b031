//! Reporting to the operator: the protocol, the device's settings, and the
//! uploader that drains the outbox.
//!
//! Reports are written by `store` into its outbox, in the transaction that
//! records what they report (`store::outbox`). The [`uploader`] sends them
//! in batches, oldest first, to `POST {endpoint}/runner/v1/reports`, and
//! heartbeats to `POST {endpoint}/runner/v1/heartbeat`. Every report's
//! `report_id` (a UUIDv7) is its idempotency key: the receiver stores each
//! key once and acknowledges a repeat, so a batch sent twice (the answer
//! lost on the way) is absorbed. Rows leave the outbox only after a 2xx.
//! The protocol is written down in `docs/reports.md`; `wfrun fleet serve`
//! (`crate::fleet`) is its reference receiver.

pub mod backoff;
pub mod uploader;

pub use crate::store::outbox::{Dropped, REPORT_SCHEMA, ReleaseReportBody, Report, RunMetrics, RunReportBody};
use crate::store::{OutboxLimits, OutboxStatus};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The path reports are posted to, under the endpoint.
pub const REPORTS_PATH: &str = "/runner/v1/reports";
/// The path heartbeats are posted to, under the endpoint.
pub const HEARTBEAT_PATH: &str = "/runner/v1/heartbeat";

/// The body of `POST /runner/v1/reports`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadBatch {
    /// The sending device (each report says it too).
    pub device_id: String,
    /// The reports, oldest first, each as the outbox keeps it.
    pub reports: Vec<serde_json::Value>,
}

/// The answer to an accepted batch (2xx).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadAnswer {
    /// Reports stored now.
    pub accepted: u64,
    /// Reports whose key was stored before (acknowledged again).
    pub duplicates: u64,
}

/// A release as a heartbeat names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseSummary {
    /// Its version.
    pub version: String,
    /// Its document digest.
    pub digest: String,
    /// Its channel.
    pub channel: String,
    /// `trial` or `committed`.
    pub state: String,
}

/// What this runner can do, for the operator's inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The guest contract (`wfrun:node` WIT package) version.
    pub wit_contract: String,
    /// Whether guests may use `wasi:http` (under the egress policy).
    pub wasi_http: bool,
    /// The guest kinds this runner has run: `node`, `job`, `workflow`.
    pub guest_kinds_seen: Vec<String>,
    /// The trigger kinds it supports.
    pub triggers: Vec<String>,
}

/// The body of `POST /runner/v1/heartbeat`: sent while connected, never
/// queued; the next one after a reconnection says everything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The report schema.
    pub schema: u32,
    /// The device.
    pub device_id: String,
    /// This runner's version.
    pub runner_version: String,
    /// When it was sent.
    pub sent_at: String,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// The active release (in trial, else the last known good).
    pub active_release: Option<ReleaseSummary>,
    /// The last known good release.
    pub last_known_good: Option<ReleaseSummary>,
    /// The ring this device is in, with `[sync]`.
    pub ring: Option<u32>,
    /// Sync: the last check of the origin, its error code, metadata expiry.
    pub sync: Option<serde_json::Value>,
    /// What it supports.
    pub capabilities: Capabilities,
    /// The outbox.
    pub outbox: OutboxStatus,
}

/// The `[report]` table: where reports go and how hard to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportSettings {
    /// The receiver, e.g. `https://fleet.example.com` (plain `http://`
    /// only on loopback).
    pub endpoint: String,
    /// The file holding this device's bearer token.
    pub token_file: Option<std::path::PathBuf>,
    /// How often a heartbeat is sent while connected (jittered by a tenth).
    pub heartbeat: Duration,
    /// The most reports in one batch.
    pub batch_reports: usize,
    /// The most bytes in one batch (at least one report is always sent).
    pub batch_bytes: u64,
    /// The outbox's bounds.
    pub outbox: OutboxLimits,
    /// The first retry's ceiling; doubling per failure…
    pub backoff_min: Duration,
    /// …up to this.
    pub backoff_max: Duration,
    /// The longest `Retry-After` honoured.
    pub retry_after_max: Duration,
    /// The longest one exchange (connect to last byte) may take.
    pub timeout: Duration,
}

impl ReportSettings {
    /// Defaults for everything but the endpoint.
    pub fn new(endpoint: &str) -> ReportSettings {
        ReportSettings {
            endpoint: endpoint.to_owned(),
            token_file: None,
            heartbeat: Duration::from_secs(60),
            batch_reports: 100,
            batch_bytes: 256 * 1024,
            outbox: OutboxLimits::default(),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            retry_after_max: Duration::from_secs(3600),
            timeout: Duration::from_secs(30),
        }
    }
}

/// Why an endpoint is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("report endpoint {endpoint:?}: {reason}")]
pub struct EndpointError {
    /// The endpoint as given.
    pub endpoint: String,
    /// What is wrong.
    pub reason: String,
}

/// The URL of `path` under `endpoint`. TLS is required unless the host
/// is loopback (`127.0.0.0/8`, `::1`, `localhost`): a bearer token never
/// crosses a network in the clear.
pub fn endpoint_url(endpoint: &str, path: &str) -> Result<http::Uri, EndpointError> {
    let bad = |reason: &str| EndpointError { endpoint: endpoint.to_owned(), reason: reason.to_owned() };
    let uri: http::Uri = format!("{}{path}", endpoint.trim_end_matches('/')).parse().map_err(|_| bad("not a URL"))?;
    let host = uri.host().ok_or_else(|| bad("no host"))?.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if loopback => Ok(uri),
        Some("http") => Err(bad("plain http:// only to a loopback address; use https://")),
        _ => Err(bad("the endpoint must be https:// (or http:// on loopback)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_is_required_off_loopback() {
        assert!(endpoint_url("https://fleet.example.com/", REPORTS_PATH).is_ok());
        assert_eq!(
            endpoint_url("http://127.0.0.1:8080", REPORTS_PATH).unwrap().to_string(),
            "http://127.0.0.1:8080/runner/v1/reports"
        );
        assert!(endpoint_url("http://[::1]:80", HEARTBEAT_PATH).is_ok());
        assert!(endpoint_url("http://10.0.0.5:8080", REPORTS_PATH).is_err());
        assert!(endpoint_url("http://fleet.example.com", REPORTS_PATH).is_err());
        assert!(endpoint_url("ftp://127.0.0.1", REPORTS_PATH).is_err());
    }
}
