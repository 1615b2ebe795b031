//! The wfrun host library and the `wfrun` command.
//!
//! wfrun runs WebAssembly components (workflow nodes and WASI command jobs)
//! inside wasmtime with fuel, memory and wall-clock limits and no ambient
//! authority. The layers, each in its own module, lowest first (what may
//! import what is in `docs/architecture.md`, and checked by a test):
//!
//! - leaves: [`manifest`] (the workflow and job formats), [`outcome`] (the
//!   stable error codes, statuses and the run report), [`units`] (sizes and
//!   durations), [`limits`] (a run's budget and limit requests), [`files`]
//!   (private files, atomic writes), [`descriptors`] (the open-file limit
//!   and each listener's share), [`settings`] (precedence);
//! - [`egress`]: the HTTP and socket egress policy and its enforcement;
//! - [`bundle`]: bundle files (components or workflow bundles), signatures;
//! - [`sandbox`]: the engine, limits, captured output and the host side of
//!   the guest contract; loads component bytes into programs and runs them;
//! - [`store`]: SQLite run history, jobs and durable state;
//! - [`workflow`]: planning and the executor;
//! - [`policy`]: what the operator allows; admits a plan;
//! - [`runner`]: prepare (read, verify, load) and run (admit, execute,
//!   record), shared by `exec` and the daemon;
//! - [`release`]: publishing releases as signed TUF repositories;
//! - [`sync`]: the device's TUF client for the release origin;
//! - [`report`]: the reporting protocol and the uploader that drains the
//!   outbox to the receiver;
//! - [`fleet`]: `wfrun fleet serve`, the reference receiver (and a static
//!   release origin) for a fleet on one machine;
//! - [`daemon`]: the long-lived runner: jobs, scheduler, supervisor,
//!   control plane, shutdown and recovery;
//! - [`cli`]: the `wfrun` commands, each only resolving settings and calling
//!   the library.
//!
//! Data flows one way: command line → resolved settings → library calls.

#![warn(missing_docs)]

pub mod bundle;
pub mod cli;
pub mod daemon;
pub mod descriptors;
pub mod egress;
pub mod files;
pub mod fleet;
pub mod fuzzing;
pub mod limits;
pub mod manifest;
pub mod outcome;
pub mod policy;
pub mod release;
pub mod report;
pub mod runner;
pub mod sandbox;
pub mod settings;
pub mod store;
pub mod sync;
pub mod units;
pub mod workflow;
