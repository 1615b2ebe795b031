//! Write wfrun workflow nodes in Rust.
//!
//! A node is one function from a JSON-deserialisable input to a
//! JSON-serialisable output, exported with [`node!`]:
//!
//! ```ignore
//! use serde::{Deserialize, Serialize};
//! use wfrun_sdk::NodeError;
//!
//! #[derive(Deserialize)]
//! struct Input { name: String }
//!
//! #[derive(Serialize)]
//! struct Output { greeting: String }
//!
//! fn hello(input: Input) -> Result<Output, NodeError> {
//!     wfrun_sdk::log::info(&format!("greeting {}", input.name));
//!     Ok(Output { greeting: format!("Hello, {}!", input.name) })
//! }
//!
//! wfrun_sdk::node!(hello);
//! ```
//!
//! Build it for `wasm32-wasip2` as a `cdylib` and run it with
//! `wfrun exec target/wasm32-wasip2/release/my_node.wasm --input '{"name":"x"}'`.
//!
//! The host interfaces are wrapped in documented modules: [`log`], [`state`],
//! [`config`] and [`metrics`], and outgoing HTTP (where the operator grants egress) in
//! [`http`]. The generated WIT bindings live in the hidden `wit` module;
//! node authors should not need them.

#![warn(missing_docs)]

use serde::Serialize;
use serde::de::DeserializeOwned;

#[doc(hidden)]
#[allow(missing_docs, unsafe_code)]
pub mod wit {
    wit_bindgen::generate!({
        path: "../host-api/wit",
        world: "node",
        pub_export_macro: true,
        export_macro_name: "__export_node",
        default_bindings_module: "wfrun_sdk::wit",
    });
}

pub mod http;

pub use serde_json::{Value, json};

use wit::exports::wfrun::node::handler as wit_handler;

/// An expected failure of a node: the run fails with error code `node_error`
/// and this code and message, and a workflow may retry it if `retryable`.
///
/// Returning a `NodeError` is how a node says "no" politely; panicking traps
/// the instance instead and is recorded as error code `trap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeError {
    /// A short machine-readable code, e.g. `invalid-input`.
    pub code: String,
    /// A human-readable explanation.
    pub message: String,
    /// Whether running the node again with the same input may succeed.
    pub retryable: bool,
}

impl NodeError {
    /// A failure that will fail again if retried with the same input.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { code: code.into(), message: message.into(), retryable: false }
    }

    /// A failure that may succeed when retried (a busy upstream, a timeout).
    pub fn retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { code: code.into(), message: message.into(), retryable: true }
    }

    /// The input did not have the shape this node expects.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new("invalid-input", message)
    }
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for NodeError {}

impl From<NodeError> for wit_handler::NodeError {
    fn from(e: NodeError) -> Self {
        Self { code: e.code, message: e.message, retryable: e.retryable }
    }
}

/// Levelled logging into the run's captured logs.
///
/// The host caps the total bytes a run may log; going past the cap ends the
/// run with error code `output_limit`, so log summaries, not every item.
pub mod log {
    use crate::wit::wfrun::node::log::{Level, write};

    /// Logs `message` at trace level.
    pub fn trace(message: &str) {
        write(Level::Trace, message)
    }
    /// Logs `message` at debug level.
    pub fn debug(message: &str) {
        write(Level::Debug, message)
    }
    /// Logs `message` at info level.
    pub fn info(message: &str) {
        write(Level::Info, message)
    }
    /// Logs `message` at warn level.
    pub fn warn(message: &str) {
        write(Level::Warn, message)
    }
    /// Logs `message` at error level.
    pub fn error(message: &str) {
        write(Level::Error, message)
    }
}

/// Durable key-value state scoped to the workflow, bounded by a quota.
///
/// A plain `wfrun exec` of a single component offers no state, and every call
/// returns [`StateError::Unavailable`](state::StateError::Unavailable); a node that needs state should turn
/// that into a [`NodeError`].
pub mod state {
    use crate::wit::wfrun::node::state as raw;
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    pub use raw::StateError;

    /// Returns the bytes stored under `key`, if any.
    pub fn get(key: &str) -> Result<Option<Vec<u8>>, StateError> {
        raw::get(key)
    }

    /// Stores `value` under `key`.
    pub fn set(key: &str, value: &[u8]) -> Result<(), StateError> {
        raw::set(key, value)
    }

    /// Removes `key`; removing a missing key is not an error.
    pub fn delete(key: &str) -> Result<(), StateError> {
        raw::delete(key)
    }

    /// Lists the keys starting with `prefix`, in byte order.
    pub fn list_keys(prefix: &str) -> Result<Vec<String>, StateError> {
        raw::list_keys(prefix)
    }

    /// Reads `key` as JSON. A value that is not valid JSON for `T` is
    /// reported as `None` with the parse error, never a panic.
    pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<Result<T, String>>, StateError> {
        Ok(get(key)?.map(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string())))
    }

    /// Stores `value` under `key` as JSON.
    pub fn set_json<T: Serialize>(key: &str, value: &T) -> Result<(), StateError> {
        // Serialising plain data into a Vec cannot fail.
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        set(key, &bytes)
    }
}

/// The node's configuration values and the secrets granted to it.
pub mod config {
    use crate::wit::wfrun::node::config as raw;

    pub use raw::ConfigError;

    /// Returns the configuration value `key` from the workflow definition.
    pub fn get(key: &str) -> Result<Option<String>, ConfigError> {
        raw::get(key)
    }

    /// Returns the secret `name` if the node's definition names it.
    pub fn secret(name: &str) -> Result<Option<String>, ConfigError> {
        raw::get_secret(name)
    }
}

/// Named numbers kept with the run: gauges (the last value stands) and
/// counters (deltas add up). `wfrun runs show` lists them; they are in the
/// `--json` report and in uploaded reports.
///
/// A run keeps at most 64 names (1 to 64 of `a-z A-Z 0-9 _ . -`); values
/// must be finite, counter deltas at least 0. A refused call records nothing
/// and returns the reason; the run goes on, so most nodes ignore the result:
///
/// ```ignore
/// let _ = wfrun_sdk::metrics::counter("rows", rows.len() as f64);
/// let _ = wfrun_sdk::metrics::gauge("mean", mean);
/// ```
pub mod metrics {
    use crate::wit::wfrun::node::metrics as raw;

    pub use raw::MetricError;

    /// Sets gauge `name` to `value`.
    pub fn gauge(name: &str, value: f64) -> Result<(), MetricError> {
        raw::gauge(name, value)
    }

    /// Adds `delta` to counter `name`.
    pub fn counter(name: &str, delta: f64) -> Result<(), MetricError> {
        raw::counter(name, delta)
    }
}

/// Runs `handler` on JSON `input` text and serialises its output. Used by
/// [`node!`]; not part of the public API.
#[doc(hidden)]
pub fn __run_json<I, O, F>(input: &str, handler: F) -> Result<String, wit_handler::NodeError>
where
    I: DeserializeOwned,
    O: Serialize,
    F: FnOnce(I) -> Result<O, NodeError>,
{
    let input: I = serde_json::from_str(input)
        .map_err(|e| NodeError::invalid_input(format!("input does not match this node: {e}")))?;
    let output = handler(input)?;
    serde_json::to_string(&output)
        .map_err(|e| NodeError::new("invalid-output", format!("output is not JSON: {e}")).into())
}

/// Exports `handler` as this component's node.
///
/// `handler` is any `fn(I) -> Result<O, NodeError>` where `I` implements
/// `serde::Deserialize` and `O` implements `serde::Serialize`. Use
/// [`Value`] for either to work with untyped JSON. Input that does not
/// deserialise into `I` fails the run with node error code `invalid-input`.
#[macro_export]
macro_rules! node {
    ($handler:path) => {
        #[doc(hidden)]
        struct __WfrunNode;

        impl $crate::wit::exports::wfrun::node::handler::Guest for __WfrunNode {
            fn run(
                input: ::std::string::String,
            ) -> ::std::result::Result<
                ::std::string::String,
                $crate::wit::exports::wfrun::node::handler::NodeError,
            > {
                $crate::__run_json(&input, $handler)
            }
        }

        $crate::wit::__export_node!(__WfrunNode with_types_in $crate::wit);
    };
}
