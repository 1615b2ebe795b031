//! Second node of the `report` workflow: totals amounts by name.
//!
//! Input `{"rows": [{"name": "ada", "amount": 3.0}, ...]}` (mapped from the
//! `parse` node's output); output `{"totals": {"ada": 5.0, ...}, "rows": N}`,
//! names in sorted order.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use wfrun_sdk::{NodeError, log};

#[derive(Deserialize)]
struct Row {
    name: String,
    amount: f64,
}

#[derive(Deserialize)]
struct Input {
    rows: Vec<Row>,
}

#[derive(Serialize)]
struct Output {
    totals: BTreeMap<String, f64>,
    rows: usize,
}

fn aggregate(input: Input) -> Result<Output, NodeError> {
    let mut totals = BTreeMap::new();
    for row in &input.rows {
        *totals.entry(row.name.clone()).or_insert(0.0) += row.amount;
    }
    log::info(&format!("{} names over {} rows", totals.len(), input.rows.len()));
    Ok(Output { totals, rows: input.rows.len() })
}

wfrun_sdk::node!(aggregate);
