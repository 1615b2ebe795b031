#!/usr/bin/env bash
# Builds the Python and JavaScript example nodes into examples/dist/:
#
#   examples/python-hello/app.py   → examples/dist/python-hello.wasm   (componentize-py)
#   examples/js-hello/hello.js     → examples/dist/js-hello.wasm       (componentize-js)
#
# Both implement the same node as examples/hello (Rust), against the WIT world
# `node` in host-api/wit, and give byte-identical output.
#
# Usage: examples/build-polyglot.sh [python] [js]     (no argument: both)
#
# Needs python3 (3.9 or later, with venv and pip) and node 20+ with npm. The
# first run downloads the toolchains, from PyPI and the npm registry, into
# examples/.toolchains/ (git-ignored; set WFRUN_TOOLCHAINS to put them
# elsewhere, e.g. a CI cache):
#
#   .toolchains/python/   a venv with componentize-py, at COMPONENTIZE_PY_VERSION below
#   .toolchains/js/       examples/js-hello/package{,-lock}.json, installed
#                         (componentize-js and jco, at the versions it pins)
#
# Later runs reuse them while they are at the pinned versions, and download
# nothing. `rm -rf examples/.toolchains` starts over.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
wit="$root/host-api/wit"
dist="$here/dist"
toolchains="${WFRUN_TOOLCHAINS:-$here/.toolchains}"

# The one place the Python toolchain version is pinned. The JavaScript
# toolchain is pinned by examples/js-hello/package-lock.json.
COMPONENTIZE_PY_VERSION=0.25.1

me="build-polyglot.sh"
say() { echo "$me: $*" >&2; }
die() { echo "$me: error: $*" >&2; exit 1; }
now() { date +%s%N; }
since() { echo "$(( ($(now) - $1) / 1000000 )) ms"; }

want_python=0 want_js=0
if [[ $# -eq 0 ]]; then
  want_python=1 want_js=1
fi
for arg in "$@"; do
  case "$arg" in
    python) want_python=1 ;;
    js) want_js=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument \`$arg\` (expected: python, js)" ;;
  esac
done

cleanup=()
trap 'rm -rf "${cleanup[@]}"' EXIT

mkdir -p "$toolchains" "$dist"
# Keep the toolchains out of git without touching the repository's .gitignore.
[[ -f "$toolchains/.gitignore" ]] || echo '*' > "$toolchains/.gitignore"

# --- Python: componentize-py in a venv ------------------------------------------------------

python_toolchain() {
  local venv="$toolchains/python" cpy="$toolchains/python/bin/componentize-py"
  if [[ -x "$cpy" ]] && [[ "$("$cpy" --version 2>/dev/null || true)" == "componentize-py $COMPONENTIZE_PY_VERSION" ]]; then
    say "reusing componentize-py $COMPONENTIZE_PY_VERSION ($venv)"
    return
  fi
  command -v python3 >/dev/null || die "python3 not found; install Python 3.9 or later (with venv and pip)"
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
    || die "python3 is $(python3 -V 2>&1); componentize-py needs 3.9 or later"
  local t0; t0="$(now)"
  say "installing componentize-py==$COMPONENTIZE_PY_VERSION into $venv"
  python3 -m venv --clear "$venv" \
    || die "could not create a venv (python3 -m venv --clear $venv); on Debian/Ubuntu install python3-venv, then rerun $0"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION" \
    || die "could not install componentize-py==$COMPONENTIZE_PY_VERSION from PyPI (see above). Retry with:
  $0 python
(it runs: $venv/bin/python -m pip install componentize-py==$COMPONENTIZE_PY_VERSION)"
  [[ "$("$cpy" --version 2>/dev/null || true)" == "componentize-py $COMPONENTIZE_PY_VERSION" ]] \
    || die "$cpy does not run or is not version $COMPONENTIZE_PY_VERSION; remove $venv and rerun $0"
  say "installed componentize-py $COMPONENTIZE_PY_VERSION in $(since "$t0")"
}

build_python() {
  local t0 stage out="$dist/python-hello.wasm"
  t0="$(now)"
  # Build from a copy, so that the guest interpreter's __pycache__ and any
  # stray files stay out of the source tree and out of the component.
  stage="$(mktemp -d)"
  cleanup+=("$stage")
  cp "$here/python-hello/app.py" "$root/guest-sdk/python/wfrun_sdk.py" "$stage/"
  (cd "$stage" && env -u VIRTUAL_ENV "$toolchains/python/bin/componentize-py" --quiet \
      -d "$wit" -w node componentize app -p "$stage" -o "$stage/out.wasm") \
    || die "componentize-py failed to build examples/python-hello (see above)"
  mv "$stage/out.wasm" "$out"
  say "built $out ($(stat -c %s "$out") bytes) in $(since "$t0")"
}

# --- JavaScript: componentize-js from npm ---------------------------------------------------

js_toolchain() {
  local dir="$toolchains/js" stamp want want_version
  command -v node >/dev/null || die "node not found; install Node.js 20 or later (with npm)"
  command -v npm >/dev/null || die "npm not found; install npm (it comes with Node.js)"
  node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' \
    || die "node is $(node --version); componentize-js needs Node.js 20 or later"
  want="$(cat "$here/js-hello/package.json" "$here/js-hello/package-lock.json" | sha256sum | cut -d' ' -f1)"
  stamp="$dir/.installed-from"
  if [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$want" ]] && [[ -x "$dir/node_modules/.bin/componentize-js" ]]; then
    say "reusing componentize-js $(node -p 'require(process.argv[1]).version' "$dir/node_modules/@bytecodealliance/componentize-js/package.json") ($dir)"
    return
  fi
  local t0; t0="$(now)"
  say "installing the JavaScript toolchain (npm install from package-lock.json) into $dir"
  rm -rf "$dir"
  mkdir -p "$dir"
  cp "$here/js-hello/package.json" "$here/js-hello/package-lock.json" "$dir/"
  # `npm install` on a copy, not `npm ci`: the lock file pins every package
  # it lists (version and integrity), but it lacks some other platforms'
  # optional binaries (e.g. @rolldown/binding-darwin-arm64), which the
  # registry these machines use does not carry, and `npm ci` refuses a lock
  # file with such gaps. npm install fills or skips them; the copy is ours to
  # rewrite, and the versions are checked below.
  (cd "$dir" && npm install --no-audit --no-fund --loglevel=error) \
    || die "could not install the JavaScript toolchain from the npm registry (see above). Retry with:
  $0 js
(it runs: cd $dir && npm install)"
  [[ -x "$dir/node_modules/.bin/componentize-js" ]] || die "npm did not install componentize-js into $dir/node_modules/.bin; remove $dir and rerun $0"
  local pkg got
  for pkg in @bytecodealliance/componentize-js @bytecodealliance/jco; do
    want_version="$(node -p 'require(process.argv[1]).devDependencies[process.argv[2]]' "$here/js-hello/package.json" "$pkg")"
    got="$(node -p 'require(process.argv[1]).version' "$dir/node_modules/$pkg/package.json")"
    [[ "$got" == "$want_version" ]] || die "npm installed $pkg $got, but package.json pins $want_version; remove $dir and rerun $0"
  done
  echo "$want" > "$stamp"
  say "installed the JavaScript toolchain in $(since "$t0")"
}

build_js() {
  local t0 out="$dist/js-hello.wasm" tmp
  t0="$(now)"
  tmp="$dist/.js-hello.$$.wasm"
  cleanup+=("$tmp")
  # --disable http fetch-event: a hello node makes no requests (wfrun links
  # wasi:http, under its egress policy, but the import would only add
  # size). --disable stdio: console.log and
  # console.error are dropped (a node logs through wfrun:node/log), which
  # leaves only wasi:cli/stderr, io, clocks and random. random and clocks stay:
  # disabling them too (--disable stdio random clocks http fetch-event) removes every WASI import, but then
  # Math.random and crypto.getRandomValues repeat the values seeded at build
  # time and Date.now is frozen at the build's time.
  # (`jco componentize` takes the same options, but jco 1.35.0 fails to read a
  # WIT path, "failed to get path metadata", so componentize-js runs directly.)
  # From a copy beside the SDK helper: componentize-js resolves a module
  # only inside the directory it runs in.
  local stage
  stage="$(mktemp -d)"
  cleanup+=("$stage")
  cp "$here/js-hello/hello.js" "$root/guest-sdk/js/wfrun-sdk.js" "$stage/"
  (cd "$stage" && "$toolchains/js/node_modules/.bin/componentize-js" hello.js \
      --wit "$wit" --world-name node \
      --disable stdio http fetch-event \
      -o "$tmp") \
    || die "componentize-js failed to build examples/js-hello (see above)"
  mv "$tmp" "$out"
  say "built $out ($(stat -c %s "$out") bytes) in $(since "$t0")"
}

if [[ $want_python == 1 ]]; then
  python_toolchain
  build_python
fi
if [[ $want_js == 1 ]]; then
  js_toolchain
  build_js
fi
