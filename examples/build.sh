#!/usr/bin/env bash
# Builds every example guest into examples/dist/<name>.wasm (the Rust ones
# with cargo, python-hello and js-hello with examples/build-polyglot.sh, which
# installs its toolchains into examples/.toolchains/ on first use), and packs
# each workflow in examples/workflows/<name>/ into examples/dist/<name>.wasm.
#
# Usage: examples/build.sh
# Needs the wasm32-wasip2 target; installs it with rustup when missing.
# Packing uses the wfrun binary, built from this repository (release).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "build.sh: installing the wasm32-wasip2 target (rustup target add wasm32-wasip2)" >&2
  rustup target add wasm32-wasip2
fi

cargo build --release --locked --target wasm32-wasip2 --manifest-path "$here/Cargo.toml" --target-dir "$here/target"
mkdir -p "$here/dist"
out="$here/target/wasm32-wasip2/release"
for guest in hello stats hello-job counter parse aggregate format fetch; do
  cp "$out/$guest.wasm" "$here/dist/"
done

# The Python and JavaScript nodes (the `mixed` workflow packs the Python one).
"$here/build-polyglot.sh"

for workflow in "$here"/workflows/*/workflow.toml; do
  name="$(basename "$(dirname "$workflow")")"
  cargo run --quiet --locked --manifest-path "$root/Cargo.toml" --bin wfrun -- \
    pack "$workflow" -o "$here/dist/$name.wasm"
done
echo "built: $(cd "$here/dist" && ls -1 *.wasm | tr '\n' ' ')" >&2
