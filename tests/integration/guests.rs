//! Builds guest fixtures from source, once per test process.
//!
//! The first call to [`guest`] runs `cargo build --release --target
//! wasm32-wasip2` over the examples workspace and the test-guests workspace
//! into `target/guests`; later calls reuse the result.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("runtime/ has a parent")
}

fn target_dir() -> PathBuf {
    root().join("target").join("guests")
}

fn build_all() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    for workspace in ["examples", "tests/guests"] {
        let status = Command::new(&cargo)
            .args(["build", "--release", "--quiet", "--locked", "--target", "wasm32-wasip2", "--manifest-path"])
            .arg(root().join(workspace).join("Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir())
            .status()
            .expect("running cargo to build guest fixtures");
        assert!(
            status.success(),
            "building the {workspace} guests failed; is the wasm32-wasip2 target installed? \
             (rustup target add wasm32-wasip2)"
        );
    }
    target_dir().join("wasm32-wasip2").join("release")
}

/// The path of the built guest `name` (e.g. `hello`, `hostile-job`).
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(build_all);
    let path = dir.join(format!("{name}.wasm"));
    assert!(path.exists(), "no guest fixture named {name} at {}", path.display());
    path
}

/// The Python and JavaScript guests: `python-hello` and `js-hello` (the
/// examples, built by `examples/build-polyglot.sh`, which installs its
/// toolchains into `examples/.toolchains/` on first use) and the test
/// fixtures `python-spin` and `js-spin` (built here with those toolchains).
/// Built once per test process.
pub fn polyglot(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(build_polyglot);
    let path = match name {
        "python-hello" | "js-hello" => root().join("examples").join("dist").join(format!("{name}.wasm")),
        _ => dir.join(format!("{name}.wasm")),
    };
    assert!(path.exists(), "no polyglot guest named {name} at {}", path.display());
    path
}

fn build_polyglot() -> PathBuf {
    let script = root().join("examples").join("build-polyglot.sh");
    let status = Command::new(&script).status().expect("running examples/build-polyglot.sh");
    assert!(
        status.success(),
        "examples/build-polyglot.sh failed (it needs python3 with venv and pip, node 20 and npm, and the PyPI and npm registries)"
    );
    let toolchains = root().join("examples").join(".toolchains");
    let wit = root().join("host-api").join("wit");
    let out = target_dir().join("polyglot");
    std::fs::create_dir_all(&out).unwrap();

    // componentize-py writes __pycache__ beside the app: build from a copy.
    let stage = tempfile::tempdir().unwrap();
    std::fs::copy(root().join("tests/guests/python-spin/app.py"), stage.path().join("app.py")).unwrap();
    let status = Command::new(toolchains.join("python/bin/componentize-py"))
        .env_remove("VIRTUAL_ENV")
        .current_dir(stage.path())
        .args(["--quiet", "-d"])
        .arg(&wit)
        .args(["-w", "node", "componentize", "app", "-p"])
        .arg(stage.path())
        .arg("-o")
        .arg(out.join("python-spin.wasm"))
        .status()
        .expect("running componentize-py");
    assert!(status.success(), "componentize-py failed to build tests/guests/python-spin");

    let status = Command::new(toolchains.join("js/node_modules/.bin/componentize-js"))
        .current_dir(root().join("tests/guests/js-spin"))
        .arg("spin.js")
        .arg("--wit")
        .arg(&wit)
        .args(["--world-name", "node", "--disable", "stdio", "http", "fetch-event", "-o"])
        .arg(out.join("js-spin.wasm"))
        .status()
        .expect("running componentize-js");
    assert!(status.success(), "componentize-js failed to build tests/guests/js-spin");
    out
}

/// The bytes of the WAT fixture `tests/wat/<name>.wat`, compiled to binary.
pub fn wat(name: &str) -> Vec<u8> {
    let path = root().join("tests").join("wat").join(format!("{name}.wat"));
    wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Writes the WAT fixture `name` as a binary into `dir` and returns its path.
pub fn wat_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, wat(name)).unwrap();
    path
}
