#!/usr/bin/env bash
# Runs the libpaillier comparison of BENCHMARKS.md ("Private join and aggregate"), outside the
# workspace, with its own target directory.
set -euo pipefail
cd "$(dirname "$0")/libpaillier"
CARGO_TARGET_DIR="${TMPDIR:-/tmp}/veil-libpaillier-bench" cargo run --release
