//! Links the `wfrun` binary with the functions a warm `wfrun exec` runs
//! placed side by side.
//!
//! A short process pays for every page of code it touches: each first touch
//! is a page fault, and the kernel maps at most 64 KiB around it. The
//! functions a warm `exec` runs (about 2,600, 1.9 MB) lie scattered over
//! the binary's 25 MB of code, in about 145 such windows; listed in
//! `link/symbol-order.txt` (written by `scripts/symbol-order.py`), the
//! linker puts them in about 32. That is about 85 of an `exec`'s 600 page
//! faults and 7% of its time (docs/performance.md).
//!
//! LLD reads the list (`--symbol-ordering-file`); it is the linker Rust uses
//! on x86-64 Linux. Where another linker may be in use (a target without
//! LLD by default, a linker set in the configuration or the flags) the
//! binary is linked as usual: the order changes speed, never behaviour.

use std::path::Path;

fn main() {
    let order = Path::new("link/symbol-order.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let target = std::env::var("TARGET").unwrap_or_default();
    let rustflags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let other_linker = std::env::var_os("RUSTC_LINKER").is_some()
        || ["linker", "fuse-ld", "link-self-contained"].iter().any(|flag| rustflags.contains(flag));
    if target != "x86_64-unknown-linux-gnu" || other_linker || !order.exists() {
        return;
    }
    let order = std::fs::canonicalize(order).expect("link/symbol-order.txt exists");
    println!("cargo:rustc-link-arg-bin=wfrun=-Wl,--symbol-ordering-file={}", order.display());
    // Names the build no longer has (a dependency changed since the list
    // was written) are skipped without a warning each.
    println!("cargo:rustc-link-arg-bin=wfrun=-Wl,--no-warn-symbol-ordering");
}
