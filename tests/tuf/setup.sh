#!/usr/bin/env bash
# Installs python-tuf (the reference TUF implementation) into a venv that
# the release tests use as an independent client and publisher:
#
#   $WFRUN_TOOLCHAINS/tuf/   (default examples/.toolchains/tuf/, git-ignored)
#
# Later runs reuse it while it is at the pinned version. Needs python3 with
# venv and pip, and PyPI. Prints the venv's python on stdout.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
toolchains="${WFRUN_TOOLCHAINS:-$root/examples/.toolchains}"
# The one place the python-tuf version is pinned (securesystemslib with
# pyca/cryptography, for the publisher's ed25519 keys).
TUF_VERSION=7.0.1
SSLIB_VERSION=1.6.0
pins="tuf==$TUF_VERSION securesystemslib[crypto]==$SSLIB_VERSION"
venv="$toolchains/tuf"
mkdir -p "$toolchains"
[[ -f "$toolchains/.gitignore" ]] || echo '*' > "$toolchains/.gitignore"
if [[ ! -x "$venv/bin/python" ]] || [[ "$(cat "$venv/.version" 2>/dev/null)" != "$pins" ]]; then
  echo "tuf setup.sh: installing $pins into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086 # the pins are separate words
  "$venv/bin/pip" install --quiet --disable-pip-version-check $pins >&2
  echo "$pins" > "$venv/.version"
fi
echo "$venv/bin/python"
