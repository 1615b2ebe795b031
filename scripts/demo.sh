#!/usr/bin/env bash
# Sets up a fresh machine and runs the main example: builds the example
# guests (installing the wasm32-wasip2 target if missing), builds wfrun, and
# runs the `hello` node, then the `hello-job` command.
#
# Usage: scripts/demo.sh [NAME]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
name="${1:-world}"

examples/build.sh
wfrun() { cargo run --quiet --release --locked --bin wfrun -- "$@"; }

echo "\$ wfrun exec examples/dist/hello.wasm --input '{\"name\":\"$name\"}'" >&2
wfrun exec examples/dist/hello.wasm --input "{\"name\":\"$name\"}"
echo "\$ wfrun exec examples/dist/hello-job.wasm -- $name" >&2
wfrun exec examples/dist/hello-job.wasm -- "$name"
