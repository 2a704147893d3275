#!/usr/bin/env bash
# Flower 1.41 timing anchor: breast_cancer logistic regression, 3 SuperNodes,
# FedAvg with and without SecAgg+, Flower deployment mode on 127.0.0.1.
# Env: FLWR_VENV (default /tmp/flwr-venv), ROUNDS (20), FLWR_BENCH_PORT (39200),
#      FLWR_BENCH_TIMEOUT (seconds each process may live, default 2400).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DATA=$(cd "$HERE/../../examples/data/breast_cancer" && pwd)
VENV=${FLWR_VENV:-/tmp/flwr-venv}
ROUNDS=${ROUNDS:-20}
PORT=${FLWR_BENCH_PORT:-39200}
LIMIT=${FLWR_BENCH_TIMEOUT:-2400}

# --- environment -----------------------------------------------------------
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
if ! "$VENV/bin/python" -c 'import flwr, numpy; assert flwr.__version__ == "1.41.0"' 2>/dev/null; then
  "$VENV/bin/pip" install -q flwr==1.41.0 numpy
fi
export PATH="$VENV/bin:$PATH" FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1

WORK=$(mktemp -d /tmp/flwr-bench.XXXXXX)
export FLWR_HOME="$WORK/flwr-home"   # keeps the CLI config away from ~/.flwr
mkdir -p "$FLWR_HOME"
cat >"$FLWR_HOME/config.toml" <<EOF
[superlink]
default = "bench"

[superlink.bench]
address = "127.0.0.1:$PORT"
insecure = true
EOF

# --- process management: every process is time-bounded and killed on exit ---
PIDS=()
start() { # start LOGNAME CMD...: own process group, bounded by `timeout`
  local log=$1; shift
  setsid timeout "$LIMIT" "$@" >"$WORK/$log.log" 2>&1 &
  PIDS+=($!)
}
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${PIDS[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "logs: $WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() { # wait until 127.0.0.1:$1 accepts connections (max 60 s)
  python - "$1" <<'EOF'
import socket, sys, time
deadline = time.time() + 60
while time.time() < deadline:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close(); sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit("timed out waiting for port " + sys.argv[1])
EOF
}

# --- SuperLink + 3 SuperNodes (insecure = plaintext HTTP on loopback) --------
start superlink flower-superlink --insecure --host 127.0.0.1 --port "$PORT" \
  --disable-runtime-dependency-installation
wait_port "$PORT"
for i in 0 1 2; do
  start "supernode$i" flower-supernode --insecure --superlink "127.0.0.1:$PORT" \
    --host 127.0.0.1 --port $((PORT + 11 + i)) \
    --node-config "partition-id=$i data-dir=\"$DATA\""
done

# --- the two runs ------------------------------------------------------------
for mode in plain secagg; do
  secagg=false; [ "$mode" = secagg ] && secagg=true
  echo "== flwr run ($mode, $ROUNDS rounds)"
  timeout "$LIMIT" flwr run "$HERE/app" bench --stream \
    --run-config "num-rounds=$ROUNDS secagg=$secagg result-file=\"$WORK/$mode.json\"" \
    >"$WORK/run-$mode.log" 2>&1 || { tail -n 40 "$WORK/run-$mode.log"; exit 1; }
  for _ in $(seq 60); do [ -s "$WORK/$mode.json" ] && break; sleep 1; done
  [ -s "$WORK/$mode.json" ] || { tail -n 40 "$WORK/run-$mode.log"; echo "no result for $mode"; exit 1; }
done

python - "$WORK" <<'EOF'
import json, statistics, sys
r = {m: json.load(open(f"{sys.argv[1]}/{m}.json")) for m in ("plain", "secagg")}
for m, v in r.items():
    rest = v["round_ms"][1:]
    print(f"{m:6s}: {v['ms_per_round']:.1f} ms/round over {v['rounds']} rounds "
          f"(round 1 {v['round_ms'][0]:.1f} ms, median of rounds 2.. {statistics.median(rest):.1f} ms), "
          f"accuracy {v['final_accuracy']:.4f}, loss {v['final_loss']:.4f}")
print(f"flower 1.41 deployment, breast_cancer logistic, 3 supernodes: "
      f"plain {r['plain']['ms_per_round']:.1f} ms/round, secagg+ {r['secagg']['ms_per_round']:.1f} ms/round, "
      f"final accuracy {r['plain']['final_accuracy']:.4f} (secagg+ {r['secagg']['final_accuracy']:.4f})")
EOF
