#!/usr/bin/env bash
# What `lanceferry mirror` costs a Chroma client, for docs/performance.md.
# Run from the repository root:
#   bash scripts/bench_mirror.sh
# Starts `chroma run` (chromadb 1.5.9) on a fresh directory, creates the
# bench collection, applies a sync plan for it (release build), starts the
# mirror in front of the server, runs scripts/bench_mirror.py (latency of
# single-record 1536-d adds direct vs through the mirror, alternating;
# throughput of 4 concurrent clients; the journal's drain), and stops both
# by PID. N, CLIENTS and REQUESTS override the sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lanceferry-target}"
VENV="${LANCEFERRY_VENVS:-$HOME/.cache/lanceferry-venvs}/chroma-1.5.9"
scripts/setup-python.sh chroma-1.5.9
cargo build --release --locked -q --bin lanceferry
BIN="$CARGO_TARGET_DIR/release/lanceferry"
OUT=$(mktemp -d)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(port); PROXY=$(port)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$OUT"' EXIT
ANONYMIZED_TELEMETRY=False "$VENV/bin/chroma" run --path "$OUT/chroma" --host 127.0.0.1 --port "$UP" > "$OUT/chroma.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do curl -sf -o /dev/null "http://127.0.0.1:$UP/api/v2/heartbeat" && break; sleep 0.2; done
"$VENV/bin/python" scripts/bench_mirror.py setup "http://127.0.0.1:$UP"
cat > "$OUT/plan.yaml" <<YAML
version: 1
name: bench-mirror
source: { chroma: { url: "http://127.0.0.1:$UP" } }
target: { lancedb: { uri: $OUT/lancedb } }
state: { path: $OUT/state }
collections:
  - source: bench_mirror
    mode: sync
YAML
"$BIN" apply "$OUT/plan.yaml" --auto-approve > /dev/null 2>&1
"$BIN" mirror "$OUT/plan.yaml" --listen "127.0.0.1:$PROXY" > "$OUT/mirror.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$PROXY/lanceferry/stats" && break; sleep 0.1; done
echo "machine: $(nproc) cores; commit $(git rev-parse --short HEAD); chromadb 1.5.9 server, release build"
"$VENV/bin/python" scripts/bench_mirror.py run "http://127.0.0.1:$UP" "http://127.0.0.1:$PROXY" \
  --n "${N:-500}" --clients "${CLIENTS:-4}" --requests "${REQUESTS:-2000}"
# The "direct" adds bypassed the mirror (by design): a sync brings them,
# then the table equals the collection.
"$BIN" apply "$OUT/plan.yaml" --auto-approve 2>&1 | grep -o 'sync: [^;]*' | head -1
"$BIN" verify "$OUT/plan.yaml" 2>&1 | tail -1
