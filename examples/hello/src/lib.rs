//! The smallest useful node: greets `name`.
//!
//! Input `{"name": "x"}` gives `{"greeting": "Hello, x!"}`. A missing name
//! greets `world`. The salutation comes from the node's `greeting`
//! configuration value when the host offers one (a workflow can set it), else
//! `Hello`.

use serde::{Deserialize, Serialize};
use wfrun_sdk::{NodeError, config, log};

#[derive(Deserialize)]
struct Input {
    #[serde(default = "world")]
    name: String,
}

fn world() -> String {
    "world".to_owned()
}

#[derive(Serialize)]
struct Output {
    greeting: String,
}

fn hello(input: Input) -> Result<Output, NodeError> {
    // `config` is unavailable under a plain `wfrun exec`; fall back quietly.
    let salutation = config::get("greeting").ok().flatten().unwrap_or_else(|| "Hello".to_owned());
    log::info(&format!("greeting {}", input.name));
    Ok(Output { greeting: format!("{salutation}, {}!", input.name) })
}

wfrun_sdk::node!(hello);
