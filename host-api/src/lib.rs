//! The wfrun guest contract and its host bindings.
//!
//! The WIT package `wfrun:node@0.1.0` in `host-api/wit/` is the single source
//! of truth for what a node exports (`handler.run`) and which host interfaces it
//! may import (`log`, `state`, `config`, `metrics`). This crate runs
//! [`wasmtime::component::bindgen!`] over it once, inside a private module, and
//! re-exports only what the host needs: the [`Node`] world with its
//! pre-instantiated form [`NodePre`], the [`NodeError`] record, and the four
//! import interfaces whose `Host` traits the runtime implements.
//!
//! Every import is `trappable`: a host function may end the run (for example
//! when a guest logs past its cap) by returning an error, which becomes a trap
//! rather than a value the guest could ignore. `log.write` and the export are
//! `async`, so a run waiting on output can still be stopped by its deadline.

#![warn(missing_docs)]

#[allow(missing_docs)]
mod generated {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "node",
        imports: {
            // Async so that echoing a log line can wait for a slow terminal
            // inside the run's deadline instead of blocking the host thread.
            "wfrun:node/log.write": async | trappable,
            default: trappable,
        },
        exports: { default: async },
    });
}

pub use generated::exports::wfrun::node::handler::NodeError;
pub use generated::wfrun::node::{config, log, metrics, state};
pub use generated::{Node, NodeIndices, NodePre};

/// The name under which a node component exports its handler interface.
pub const HANDLER_EXPORT: &str = "wfrun:node/handler@0.1.0";

/// The prefix of the export a WASI command component (a job) carries.
pub const COMMAND_EXPORT_PREFIX: &str = "wasi:cli/run@0.2";
