#!/usr/bin/env bash
# Runs wfrun's benchmarks (docs/performance.md), including the comparison
# with `wasmtime run`: installs wasmtime-cli 48 into target/tools (a local,
# git-ignored directory) when it is not there yet. Not part of CI.
#
# Usage: scripts/bench.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
tools="$PWD/target/tools"
if [ ! -x "$tools/bin/wasmtime" ]; then
  echo "bench.sh: installing wasmtime-cli 48.0.8 into $tools (cargo install; several minutes)" >&2
  cargo install --root "$tools" wasmtime-cli --version 48.0.8 --locked
fi
"$tools/bin/wasmtime" --version >&2
WASMTIME="$tools/bin/wasmtime" cargo bench -p wfrun-runtime --bench exec
cargo bench -p wfrun-runtime --bench daemon
