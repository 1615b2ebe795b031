#!/usr/bin/env bash
# A fleet on one machine (docs/fleet.md). The script:
#  1. publishes release 1.0.0 with `wfrun release`;
#  2. starts `wfrun fleet serve`, which serves it and receives reports;
#  3. starts a device daemon with [sync] and [report] tables on a fresh
#     state directory;
#  4. shows the release activating and its runs arriving as reports;
#  5. publishes a broken 1.1.0 and shows the device rolling back by itself.
# It stops everything it started. Files go to a fresh temporary directory
# (or FLEET_DEMO_DIR), which is kept so you can look around afterwards.
#
# Usage: scripts/fleet-demo.sh
# Builds wfrun (release; or set WFRUN=path/to/wfrun) and the hello example
# if they are missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
work="${FLEET_DEMO_DIR:-$(mktemp -d)}"
mkdir -p "$work"
cd "$work"

if [ ! -f "$root/examples/dist/hello.wasm" ]; then
  rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
  cargo build --release --locked --target wasm32-wasip2 --manifest-path "$root/examples/Cargo.toml" \
    --target-dir "$root/examples/target" -p hello
  mkdir -p "$root/examples/dist"
  cp "$root/examples/target/wasm32-wasip2/release/hello.wasm" "$root/examples/dist/"
fi
wfrun="${WFRUN:-}"   # a wfrun binary to use instead of building one
if [ -z "$wfrun" ]; then
  cargo build --quiet --locked --manifest-path "$root/Cargo.toml" --bin wfrun
  wfrun="$root/target/debug/wfrun"
fi
cp "$root/examples/dist/hello.wasm" .

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

say() { printf '\n== %s\n' "$*" >&2; }
show() { printf '$ %s\n' "$*" >&2; "$@"; }
# Waits up to 60 s for a Python expression over `wfrun ... --json` to hold.
wait_for() {
  local what=$1 expr=$2; shift 2
  for _ in $(seq 600); do
    if "$@" --json 2>/dev/null | python3 -c "import json,sys; v=json.load(sys.stdin); sys.exit(0 if ($expr) else 1)" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "fleet-demo: timed out waiting for $what" >&2
  exit 1
}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
origin="http://127.0.0.1:$port"

say "1. publish release 1.0.0: a job greeting every second"
cat > v1.toml <<'TOML'
[jobs.greet]
bundle = "hello.wasm"
every = "1s"
input = '{"name": "fleet"}'
TOML
show "$wfrun" release init repo >/dev/null
show "$wfrun" release add repo --channel stable --version 1.0.0 hello.wasm --jobs v1.toml >/dev/null
show "$wfrun" release status repo

say "2. serve it, and receive reports, on $origin"
token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
echo "demo-device=$token" > tokens
(umask 077 && echo "$token" > device.token)
"$wfrun" --state-dir fleet fleet serve --repo repo --listen "127.0.0.1:$port" --tokens tokens 2> fleet.log &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

say "3. a device on a fresh state directory, pinned on the repository's root"
cat > device.toml <<TOML
[device]
id = "demo-device"

[retry]
max_attempts = 1

[sync]
url = "$origin"
channel = "stable"
interval = "1s"
trusted_root = "repo/metadata/root.json"
trial_runs = 2

[report]
endpoint = "$origin"
token_file = "device.token"
heartbeat = "1s"
TOML
cat device.toml >&2
"$wfrun" daemon --config device.toml --state-dir device 2> device.log &
pids+=($!)

say "4. the release activates; its runs arrive as reports"
wait_for "1.0.0 to be committed" 'v["result"]["committed"] and v["result"]["committed"]["version"] == "1.0.0"' \
  "$wfrun" --state-dir device sync status
show "$wfrun" --state-dir device sync status
wait_for "run reports" 'sum(r["kind"] == "run" for r in v) >= 3' "$wfrun" --state-dir fleet fleet reports
show "$wfrun" --state-dir fleet fleet reports --limit 8

say "5. publish a broken 1.1.0 (its job's input is not what the node takes): the device rolls back"
cat > v2.toml <<'TOML'
[jobs.greet]
bundle = "hello.wasm"
every = "1s"
input = '{"name": 42}'
TOML
show "$wfrun" release add repo --channel stable --version 1.1.0 hello.wasm --jobs v2.toml >/dev/null
wait_for "the rollback report" \
  'any(r["kind"] == "release" and r["release"]["event"] == "rolled_back" and r["release"]["version"] == "1.1.0" for r in v)' \
  "$wfrun" --state-dir fleet fleet reports --limit 100000
show "$wfrun" --state-dir device sync status
wait_for "a heartbeat naming 1.0.0 again" \
  'v[0]["heartbeat"]["active_release"]["version"] == "1.0.0" and v[0]["heartbeat"]["last_known_good"]["version"] == "1.0.0"' \
  "$wfrun" --state-dir fleet fleet devices
show "$wfrun" --state-dir fleet fleet devices
echo "release events received:" >&2
"$wfrun" --state-dir fleet fleet reports --limit 100000 --json | python3 -c '
import json, sys
for r in json.load(sys.stdin):
    if r["kind"] == "release":
        e = r["release"]
        print("  %s  %-6s %-12s %s" % (e["at"], e["version"] or "", e["event"], e["code"] or ""))
' >&2
say "done: everything is in $work (fleet.log and device.log hold the two processes' logs)"
