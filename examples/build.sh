#!/usr/bin/env bash
# Builds every example guest into examples/dist/<name>.wasm.
#
# Usage: examples/build.sh
# Needs the wasm32-wasip2 target; installs it with rustup when missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "build.sh: installing the wasm32-wasip2 target (rustup target add wasm32-wasip2)" >&2
  rustup target add wasm32-wasip2
fi

cargo build --release --locked --target wasm32-wasip2 --manifest-path "$here/Cargo.toml" --target-dir "$here/target"
mkdir -p "$here/dist"
out="$here/target/wasm32-wasip2/release"
cp "$out/hello.wasm" "$out/stats.wasm" "$out/hello-job.wasm" "$here/dist/"
echo "built: $(cd "$here/dist" && ls -1 *.wasm | tr '\n' ' ')" >&2
