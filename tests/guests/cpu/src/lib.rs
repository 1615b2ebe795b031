//! A branchy, call-heavy CPU-bound node for benchmarks: a sieve, a sort, a
//! hash map and recursion, sized by `n`. Input `{"n": 1}`; output a checksum
//! so no work can be optimised away.

use wfrun_sdk::{NodeError, Value, json};

// Shared with the benchmark, which runs the same code natively.
mod work;
use work::work;

fn cpu(input: Value) -> Result<Value, NodeError> {
    let n = input["n"].as_u64().unwrap_or(1);
    Ok(json!({"checksum": work(n)}))
}

wfrun_sdk::node!(cpu);

