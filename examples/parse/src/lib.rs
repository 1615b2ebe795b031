//! First node of the `report` workflow: parses CSV text into rows.
//!
//! Input `{"csv": "name,amount\nada,3\n..."}`; output `{"rows": [{"name":
//! "ada", "amount": 3.0}, ...]}`. The delimiter comes from the node's
//! `delimiter` configuration value (default `,`). The first line is a header
//! and must name `name` and `amount` columns.

use serde::{Deserialize, Serialize};
use wfrun_sdk::{NodeError, config, log};

#[derive(Deserialize)]
struct Input {
    csv: String,
}

#[derive(Serialize)]
struct Row {
    name: String,
    amount: f64,
}

#[derive(Serialize)]
struct Output {
    rows: Vec<Row>,
}

fn parse(input: Input) -> Result<Output, NodeError> {
    let delimiter = config::get("delimiter").ok().flatten().and_then(|d| d.chars().next()).unwrap_or(',');
    let mut lines = input.csv.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().unwrap_or_default().split(delimiter).map(str::trim).collect();
    let column = |name: &str| {
        header.iter().position(|h| *h == name).ok_or_else(|| NodeError::invalid_input(format!("no `{name}` column in the header")))
    };
    let (name_at, amount_at) = (column("name")?, column("amount")?);
    let mut rows = Vec::new();
    for (number, line) in lines.enumerate() {
        let fields: Vec<&str> = line.split(delimiter).map(str::trim).collect();
        let field = |at: usize| fields.get(at).copied().unwrap_or_default();
        let amount = field(amount_at)
            .parse::<f64>()
            .map_err(|_| NodeError::invalid_input(format!("line {}: amount {:?} is not a number", number + 2, field(amount_at))))?;
        rows.push(Row { name: field(name_at).to_owned(), amount });
    }
    log::info(&format!("parsed {} rows", rows.len()));
    Ok(Output { rows })
}

wfrun_sdk::node!(parse);
