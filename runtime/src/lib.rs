//! The wfrun host library and the `wfrun` command.
//!
//! wfrun runs WebAssembly components (workflow nodes and WASI command jobs)
//! inside wasmtime with fuel, memory and wall-clock limits and no ambient
//! authority. The layers, each in its own module:
//!
//! - [`bundle`]: bundle files (components or workflow bundles), signatures;
//! - [`sandbox`]: the engine, limits, captured output and the host side of
//!   the guest contract; loads bundles into programs and runs them;
//! - [`egress`]: the HTTP and socket egress policy and its enforcement;
//! - [`outcome`]: the stable error codes and the run report;
//! - [`workflow`]: workflow definitions, packing and the executor;
//! - [`store`]: SQLite run history and durable state;
//! - [`files`]: files and directories private to the user;
//! - [`daemon`]: the long-lived runner: jobs, triggers, control plane,
//!   supervision, shutdown and recovery;
//! - [`cli`]: the `wfrun` commands, each only parsing flags and calling the
//!   library.
//!
//! Data flows one way: command line → resolved settings → library calls.

#![warn(missing_docs)]

pub mod bundle;
pub mod cli;
pub mod daemon;
pub mod egress;
pub mod files;
pub mod outcome;
pub mod sandbox;
pub mod store;
pub mod workflow;
