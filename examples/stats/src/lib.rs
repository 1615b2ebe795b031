//! Summarises numbers: a node that transforms JSON and fails politely.
//!
//! Input `{"values": [3, 1, 2]}` gives
//! `{"count": 3, "sum": 6.0, "min": 1.0, "max": 3.0, "mean": 2.0, "sorted": [1.0, 2.0, 3.0]}`.
//! An empty list gives a count of 0 and nulls. Anything that is not a number
//! in `values` is a node error with code `invalid-input` naming its position.
//! It records two metrics with the run: the counter `values` and the gauge
//! `mean`.

use serde::Serialize;
use wfrun_sdk::{NodeError, Value, log, metrics};

#[derive(Serialize)]
struct Output {
    count: usize,
    sum: f64,
    min: Option<f64>,
    max: Option<f64>,
    mean: Option<f64>,
    sorted: Vec<f64>,
}

fn stats(input: Value) -> Result<Output, NodeError> {
    let values = input
        .get("values")
        .and_then(Value::as_array)
        .ok_or_else(|| NodeError::invalid_input("expected {\"values\": [numbers]}"))?;
    let mut numbers = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        let n = v.as_f64().ok_or_else(|| NodeError::invalid_input(format!("values[{i}] is not a number: {v}")))?;
        numbers.push(n);
    }
    numbers.sort_by(f64::total_cmp);
    let sum: f64 = numbers.iter().sum();
    let count = numbers.len();
    log::debug(&format!("summarised {count} values"));
    // Kept with the run (`wfrun runs show`); a refused metric changes nothing.
    let _ = metrics::counter("values", count as f64);
    if count > 0 {
        let _ = metrics::gauge("mean", sum / count as f64);
    }
    Ok(Output {
        count,
        sum,
        min: numbers.first().copied(),
        max: numbers.last().copied(),
        mean: (count > 0).then(|| sum / count as f64),
        sorted: numbers,
    })
}

wfrun_sdk::node!(stats);
