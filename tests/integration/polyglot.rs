//! Nodes in Python (componentize-py) and JavaScript (componentize-js) under
//! the same contract, limits and codes as Rust ones, through `wfrun exec`.

use crate::exec::wfrun;
use crate::guests::{guest, polyglot, root};
use serde_json::{Value, json};

fn exec(bundle: &std::path::Path, args: &[&str]) -> (Option<i32>, Vec<u8>, Value) {
    let output = wfrun().arg("exec").arg(bundle).args(args).output().unwrap();
    let json = if args.contains(&"--json") {
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)))
    } else {
        Value::Null
    };
    (output.status.code(), output.stdout, json)
}

#[test]
fn python_and_javascript_hello_print_exactly_what_the_rust_node_prints() {
    let rust = guest("hello");
    let inputs = [
        json!({"name": "Ada"}),
        json!({}),
        json!({"name": "Zoë \"quoted\" \\ </tag> \u{2028} 🦀"}),
        json!({"name": "", "extra": [1, 2, 3]}),
    ];
    for language in ["python-hello", "js-hello"] {
        let other = polyglot(language);
        for input in &inputs {
            let input = input.to_string();
            let (rust_status, rust_out, _) = exec(&rust, &["--input", &input, "--quiet"]);
            let (status, out, _) = exec(&other, &["--input", &input, "--quiet"]);
            assert_eq!(rust_status, Some(0));
            assert_eq!(status, Some(0), "{language} on {input}");
            assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&rust_out), "{language} on {input}");
        }
        // The `log` import works the same way, and the trace records it.
        let (_, _, report) = exec(&other, &["--input", r#"{"name":"Ada"}"#, "--json"]);
        assert_eq!(report["logs"], json!([{"level": "info", "message": "greeting Ada"}]), "{language}");
        // A bad input is a node error, as from the Rust node.
        let (status, _, report) = exec(&other, &["--input", r#"{"name": 7}"#, "--json"]);
        assert_eq!(status, Some(3), "{language}: {report:#}");
        assert_eq!(report["node_error"]["code"], "invalid-input", "{language}");
    }
}

#[test]
fn python_and_javascript_nodes_hit_the_same_limits_with_the_same_codes() {
    for (hello, spin) in [("python-hello", "python-spin"), ("js-hello", "js-spin")] {
        // Memory: the interpreter's image alone is larger than 8 MiB.
        let (status, _, report) = exec(&polyglot(hello), &["--memory", "8MiB", "--json"]);
        assert_eq!(status, Some(4), "{hello}: {report:#}");
        assert_eq!(report["error_code"], "memory_limit", "{hello}");

        // Fuel (this first run also compiles the guest into the cache).
        let (status, _, report) = exec(&polyglot(spin), &["--fuel", "50000000", "--json"]);
        assert_eq!(status, Some(4), "{spin}: {report:#}");
        assert_eq!(report["error_code"], "fuel_exhausted", "{spin}");

        // Wall clock: a guest that never returns is stopped at its deadline.
        let started = std::time::Instant::now();
        let (status, _, report) =
            exec(&polyglot(spin), &["--timeout", "500ms", "--fuel", "1000000000000000", "--json"]);
        assert_eq!(status, Some(4), "{spin}: {report:#}");
        assert_eq!(report["error_code"], "timeout", "{spin}");
        let duration_ms = report["duration_ms"].as_f64().unwrap();
        assert!((500.0..5000.0).contains(&duration_ms), "{spin} ran {duration_ms} ms");
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "{spin} took {:?}", started.elapsed());
    }
}

#[test]
fn a_workflow_of_a_python_node_and_a_rust_node_runs_end_to_end() {
    // The Rust node must be where the manifest expects it.
    polyglot("python-hello");
    let dist = root().join("examples").join("dist");
    std::fs::create_dir_all(&dist).unwrap();
    std::fs::copy(guest("hello"), dist.join("hello.wasm")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("mixed.wasm");
    let manifest = root().join("examples/workflows/mixed/workflow.toml");
    let packed = wfrun().arg("pack").arg(&manifest).arg("-o").arg(&bundle).output().unwrap();
    assert!(packed.status.success(), "{}", String::from_utf8_lossy(&packed.stderr));
    let (status, _, report) = exec(&bundle, &["--input", r#"{"name": "Ada"}"#, "--json"]);
    assert_eq!(status, Some(0), "{report:#}");
    assert_eq!(report["output"], json!({"greeting": "Hello, Bonjour, Ada!!"}));
    let nodes: Vec<&str> = report["nodes"].as_array().unwrap().iter().map(|n| n["node"].as_str().unwrap()).collect();
    assert_eq!(nodes, ["python", "rust"]);
}
