#!/usr/bin/env bash
# OpenMined PSI 2.0.6 (ECDH over P-256) beside veil's intersection, on the same machine:
# n × n random 64-bit keys, 50 % overlap, the size only, both sides in one process.
# Env: PSI_VENV (default /tmp/openmined-psi-venv), KEYS (default 1000000).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV=${PSI_VENV:-/tmp/openmined-psi-venv}
KEYS=${KEYS:-1000000}

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
if ! "$VENV/bin/python" -c 'import private_set_intersection.python' 2>/dev/null; then
  "$VENV/bin/pip" install -q openmined-psi==2.0.6
fi

echo "== OpenMined PSI 2.0.6, $KEYS × $KEYS keys"
"$VENV/bin/python" "$HERE/openmined.py" "$KEYS"
echo "== veil-psi (both sides in one process), $KEYS × $KEYS keys"
cargo run --release -q -p veil-psi --example psi_bench -- "$KEYS" 0.5
