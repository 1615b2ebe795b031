#!/usr/bin/env bash
# Runs wfrun's cargo fuzz targets (fuzz/fuzz_targets/), each for SECONDS
# (default 300), bounded in memory (2 GiB per process), and keeps what they
# find in fuzz/artifacts/TARGET/ (commit a finding with its fix: the stable
# test tests/integration/fuzz_corpus.rs replays it). Installs the nightly
# toolchain and cargo-fuzz when missing. Not part of CI.
#
# FUZZ_SANITIZER picks cargo fuzz's sanitizer (address by default; "none"
# builds in half the time and runs faster, which suits wfrun's safe Rust).
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-300}"
shift || true
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=($(ls fuzz/fuzz_targets | sed 's/\.rs$//'))
fi
for target in "${targets[@]}"; do
  echo "fuzz.sh: $target for ${seconds}s" >&2
  # A scratch corpus: new inputs stay out of git unless copied in.
  mkdir -p "fuzz/target/corpus/$target"
  cargo +nightly fuzz run --sanitizer "${FUZZ_SANITIZER:-address}" "$target" "fuzz/target/corpus/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10
done
