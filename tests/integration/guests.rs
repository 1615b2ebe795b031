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
