//! Counts its own runs in durable state: `{"count": N}`, one more each run,
//! across processes. The count lives under the key `count` in the state of
//! the workflow (for a plain `wfrun exec counter.wasm`, the workflow is named
//! after the file: `counter`).

use serde::Serialize;
use wfrun_sdk::{NodeError, Value, state};

#[derive(Serialize)]
struct Output {
    count: u64,
}

fn counter(_input: Value) -> Result<Output, NodeError> {
    let unavailable = |e: state::StateError| NodeError::new("state-unavailable", format!("{e:?}"));
    let count = match state::get_json::<u64>("count").map_err(unavailable)? {
        Some(Ok(count)) => count + 1,
        Some(Err(e)) => return Err(NodeError::new("corrupt-state", format!("`count` is not a number: {e}"))),
        None => 1,
    };
    state::set_json("count", &count).map_err(unavailable)?;
    Ok(Output { count })
}

wfrun_sdk::node!(counter);
