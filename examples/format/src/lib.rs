//! Last node of the `report` workflow: renders the totals as text.
//!
//! Input (the default for a node with dependencies): `{"input": <workflow
//! input>, "aggregate": {"totals": {...}, "rows": N}}`. Output
//! `{"title": "...", "lines": ["ada: 5", ...], "text": "..."}`, largest total
//! first. The title comes from the `title` configuration value.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use wfrun_sdk::{NodeError, config};

#[derive(Deserialize)]
struct Aggregate {
    totals: BTreeMap<String, f64>,
    rows: usize,
}

#[derive(Deserialize)]
struct Input {
    aggregate: Aggregate,
}

#[derive(Serialize)]
struct Output {
    title: String,
    lines: Vec<String>,
    text: String,
}

fn format(input: Input) -> Result<Output, NodeError> {
    let title = config::get("title").ok().flatten().unwrap_or_else(|| "Report".to_owned());
    let mut totals: Vec<(String, f64)> = input.aggregate.totals.into_iter().collect();
    totals.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let lines: Vec<String> = totals.iter().map(|(name, total)| format!("{name}: {total}")).collect();
    let text = format!("{title} ({} rows)\n{}", input.aggregate.rows, lines.join("\n"));
    Ok(Output { title, lines, text })
}

wfrun_sdk::node!(format);
