//! Capability-based network egress: HTTP through `wasi:http` and sockets
//! through `wasi:sockets`, only where a policy allows.
//!
//! [`rule`] parses rules (`scheme://host[:port]`) and the targets guests ask
//! for; [`policy`] combines the operator's grant with what a bundle requests,
//! checks addresses after DNS resolution, and reads policy files; [`client`]
//! is the host side of `wasi:http/outgoing-handler`, which checks each
//! request before it opens a connection and records every refusal. Nothing is
//! allowed by default. `docs/security.md` has the rule grammar and the checks.

pub mod client;
pub mod exchange;
pub mod policy;
pub mod rule;

pub use client::EgressRun;
pub use policy::{EgressPolicy, EgressSection, HttpLimits, PolicyError, PolicyFile, PolicyViolation, RuleSet};
pub use rule::{Rule, RuleError};
