//! GETs a URL: input `{"url": "https://..."}` gives `{"status": N, "body": "..."}`.
//!
//! The request goes through the host's egress policy, so it only runs where
//! the operator grants the URL's scheme, host and port:
//!
//! ```text
//! wfrun exec fetch.wasm --allow-host https://api.github.com --input '{"url": "https://api.github.com/zen"}'
//! ```
//!
//! Redirects are followed by the SDK (each hop checked by the host again).
//! A refused request fails the node with code `http-denied`; the run's
//! `policy_violations` say why. `"max_redirects": 0` returns a redirect as is.

use serde::{Deserialize, Serialize};
use wfrun_sdk::http::Request;
use wfrun_sdk::{NodeError, log};

#[derive(Deserialize)]
struct Input {
    url: String,
    #[serde(default = "default_redirects")]
    max_redirects: usize,
}

fn default_redirects() -> usize {
    Request::DEFAULT_MAX_REDIRECTS
}

#[derive(Serialize)]
struct Output {
    status: u16,
    body: String,
}

fn fetch(input: Input) -> Result<Output, NodeError> {
    log::info(&format!("GET {}", input.url));
    let response = Request::get(&input.url).max_redirects(input.max_redirects).send()?;
    log::info(&format!("{} from {} ({} bytes)", response.status, response.url, response.body.len()));
    Ok(Output { status: response.status, body: String::from_utf8_lossy(&response.body).into_owned() })
}

wfrun_sdk::node!(fetch);
