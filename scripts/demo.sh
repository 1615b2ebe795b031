#!/usr/bin/env bash
# Sets up a fresh machine and runs the main examples: builds the example
# guests (installing the wasm32-wasip2 target if missing) and wfrun, then runs
# the `hello` node (in Rust, Python and JavaScript), the `hello-job` command
# and the `report` workflow, and
# shows the recorded runs. State and history go to a fresh temporary
# directory unless WFRUN_DIR is set.
#
# Usage: scripts/demo.sh [NAME]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
name="${1:-world}"
export WFRUN_DIR="${WFRUN_DIR:-$(mktemp -d)}"

examples/build.sh
wfrun() { cargo run --quiet --locked --bin wfrun -- "$@"; }

echo "\$ wfrun exec examples/dist/hello.wasm --input '{\"name\":\"$name\"}'" >&2
wfrun exec examples/dist/hello.wasm --input "{\"name\":\"$name\"}"
for lang in python js; do
  echo "\$ wfrun exec examples/dist/$lang-hello.wasm --input '{\"name\":\"$name\"}'" >&2
  wfrun exec "examples/dist/$lang-hello.wasm" --input "{\"name\":\"$name\"}"
done
echo "\$ wfrun exec examples/dist/hello-job.wasm -- $name" >&2
wfrun exec examples/dist/hello-job.wasm -- "$name"
echo "\$ wfrun exec examples/dist/report.wasm --input '{\"csv\": ...}'" >&2
wfrun exec examples/dist/report.wasm --input '{"csv": "name,amount\nada,3\ngrace,5\nada,4"}'
echo "\$ wfrun runs list" >&2
wfrun runs list
