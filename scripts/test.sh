#!/usr/bin/env bash
# Runs wfrun's whole test suite on a fresh machine: installs the wasm32-wasip2
# target if missing, then `cargo test --workspace`. The integration tests
# build the example and hostile guests from source themselves.
#
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "test.sh: installing the wasm32-wasip2 target" >&2
  rustup target add wasm32-wasip2
fi

cargo test --workspace --locked "$@"
