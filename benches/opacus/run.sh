#!/usr/bin/env bash
# Opacus 1.6.0 (torch 2.11.0) anchor: per-example gradient clipping throughput of the digits
# MLP 64-32-10, batch 256, clipping norm 1, one core; then veil's `bench clip` on the same
# model and rows, and one comparison line.
# Env: OPACUS_VENV (default /tmp/opacus-venv), BATCH (256), OPACUS_SECONDS (timed seconds, 3),
#      OPACUS_DTYPE (float32 or float64, default float32),
#      OPACUS_BENCH_TIMEOUT (seconds any started process may live, default 1800).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CSV="$ROOT/examples/data/digits/party_0.csv"
VENV=${OPACUS_VENV:-/tmp/opacus-venv}
BATCH=${BATCH:-256}
TIMED=${OPACUS_SECONDS:-3}
DTYPE=${OPACUS_DTYPE:-float32}
LIMIT=${OPACUS_BENCH_TIMEOUT:-1800}
TORCH=2.11.0 OPACUS=1.6.0 NUMPY=2.4.6

# --- environment -----------------------------------------------------------
# torch from PyPI (the CUDA-enabled Linux wheel with its nvidia-* dependencies, ~3 GB
# installed; only its CPU code runs here).
[ -x "$VENV/bin/python" ] || timeout "$LIMIT" python3 -m venv "$VENV"
if ! timeout "$LIMIT" "$VENV/bin/python" -c "
import torch, opacus, numpy
assert torch.__version__.split('+')[0] == '$TORCH', torch.__version__
assert opacus.__version__ == '$OPACUS', opacus.__version__
assert numpy.__version__ == '$NUMPY', numpy.__version__" 2>/dev/null; then
  timeout "$LIMIT" "$VENV/bin/pip" install -q --no-cache-dir \
    "torch==$TORCH" "opacus==$OPACUS" "numpy==$NUMPY"
fi

WORK=$(mktemp -d /tmp/opacus-bench.XXXXXX)
trap 'echo "logs: $WORK"' EXIT

# --- Opacus: GradSampleModule + DPOptimizer.clip_and_accumulate, one thread -------
echo "== Opacus $OPACUS (torch $TORCH), batch $BATCH, $DTYPE, torch.set_num_threads(1)"
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 timeout "$LIMIT" "$VENV/bin/python" "$HERE/clip.py" \
  --csv "$CSV" --batch "$BATCH" --clip 1.0 --seconds "$TIMED" --dtype "$DTYPE" \
  >"$WORK/opacus.log" 2>&1 || { cat "$WORK/opacus.log"; echo "the Opacus run failed"; exit 1; }
grep -v '^examples_per_second=' "$WORK/opacus.log" | sed 's/^/  /'
OPACUS_RATE=$(sed -n 's/^examples_per_second=\([0-9.]*\)$/\1/p' "$WORK/opacus.log")
OPACUS_VER=$(sed -n 's/^opacus_version=//p' "$WORK/opacus.log")
TORCH_VER=$(sed -n 's/^torch_version=//p' "$WORK/opacus.log")
[ -n "$OPACUS_RATE" ] || { cat "$WORK/opacus.log"; echo "no examples_per_second from Opacus"; exit 1; }
echo "  Opacus: $OPACUS_RATE examples/s"

# --- veil: `veil bench clip` (clipped_gradient_sum, f64, one thread) --------------
echo "== veil bench clip --batch $BATCH (cargo run --release)"
(cd "$ROOT" && timeout "$LIMIT" cargo run --release -q -p veil-cli -- bench clip --batch "$BATCH") \
  >"$WORK/veil.log" 2>&1 || { tail -n 40 "$WORK/veil.log"; echo "the veil run failed"; exit 1; }
grep -v '^examples_per_second=' "$WORK/veil.log" | sed 's/^/  /'
VEIL_RATE=$(sed -n 's/^examples_per_second=\([0-9.]*\)$/\1/p' "$WORK/veil.log")
[ -n "$VEIL_RATE" ] || { cat "$WORK/veil.log"; echo "no examples_per_second from veil"; exit 1; }
echo "  veil: $VEIL_RATE examples/s"

RATIO=$(awk -v v="$VEIL_RATE" -v o="$OPACUS_RATE" 'BEGIN { printf "%.2f", v / o }')
echo "per-example clipping, MLP 64-32-10, batch $BATCH, one core: veil $VEIL_RATE examples/s, Opacus $OPACUS_VER (torch $TORCH_VER, $DTYPE) $OPACUS_RATE examples/s, veil/Opacus $RATIO x"
