#!/usr/bin/env bash
# Reading a Chroma server, for docs/performance.md (issue: server reads near
# the server's own speed). Run from the repository root:
#   bash scripts/bench_http.sh
# Serves a copy of the bench data (100,000 x 1536 `canvas_explanations`,
# scripts/make_large.py with chromadb 1.5.9) with `chroma run` 1.5.9 on
# loopback and measures, in one run, release build:
#   - the floor: the same pages (1,000 records, ids + documents + metadata
#     + embeddings) fetched with curl, one after another, to /dev/null;
#   - the server's capacity: the same pages fetched by 3 and by 6 curls at
#     once (xargs -P), to /dev/null: no client can read faster than this;
#   - lanceferry's HTTP reader alone (examples/read_source --url);
#   - chromadb's HttpClient paging with get() (scripts/bench_python_get.py);
#   - `lanceferry apply` from the server (`mode: create`, `sample: 10`):
#     copy and validation.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lanceferry-target}"
BENCH_DIR="${BENCH_DIR:-$HOME/.cache/lanceferry-bench}"
VENV="${LANCEFERRY_VENVS:-$HOME/.cache/lanceferry-venvs}/chroma-1.5.9"
scripts/setup-python.sh chroma-1.5.9
DATA="$BENCH_DIR/large-100000x1536"
if [ ! -f "$DATA/.ready" ]; then
  rm -rf "$DATA"
  "$VENV/bin/python" scripts/make_large.py "$DATA" 100000 1536 canvas_explanations
  touch "$DATA/.ready"
fi
cargo build --release --locked -q --bin lanceferry --example read_source
BIN="$CARGO_TARGET_DIR/release/lanceferry"
READ="$CARGO_TARGET_DIR/release/examples/read_source"
OUT=$(mktemp -d)
cp -r "$DATA" "$OUT/chroma"   # the server may write to its directory
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ANONYMIZED_TELEMETRY=False "$VENV/bin/chroma" run --path "$OUT/chroma" --host 127.0.0.1 --port "$PORT" > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$OUT"' EXIT
for _ in $(seq 300); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/api/v2/heartbeat" && break; sleep 0.2; done
BASE="http://127.0.0.1:$PORT/api/v2/tenants/default_tenant/databases/default_database/collections"
ID=$(curl -sf "$BASE/canvas_explanations" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')

measure() { # name, command...
  local name="$1"; shift
  /usr/bin/time -f "%e %M" -o "$OUT/time" "$@" > "$OUT/last.out" 2> "$OUT/last.err" || {
    cat "$OUT/last.err" >&2; exit 1; }
  read -r wall rss < "$OUT/time"
  printf '%-46s %8.2f s %8.0f MB\n' "$name" "$wall" "$((rss / 1024))"
}

floor() {
  for off in $(seq 0 1000 99000); do
    curl -sf -o /dev/null -H 'content-type: application/json' \
      -d "{\"limit\":1000,\"offset\":$off,\"include\":[\"documents\",\"metadatas\",\"embeddings\"]}" \
      "$BASE/$ID/get"
  done
}
# The same pages, PAR requests at a time.
parallel() {
  seq 0 1000 99000 | xargs -P "$PAR" -I{} curl -sf -o /dev/null -H 'content-type: application/json' \
    -d "{\"limit\":1000,\"offset\":{},\"include\":[\"documents\",\"metadatas\",\"embeddings\"]}" \
    "$BASE/$ID/get"
}
cat > "$OUT/plan.yaml" <<YAML
version: 1
name: bench-http
source: { chroma: { url: "http://127.0.0.1:$PORT" } }
target: { lancedb: { uri: $OUT/lancedb } }
state: { path: $OUT/state }
defaults: { batch_size: 1000 }
collections:
  - source: canvas_explanations
    mode: create
    validate: { sample: 10 }
YAML

echo "machine: $(nproc) cores; commit $(git rev-parse --short HEAD); chroma run 1.5.9, 100,000 x 1536, pages of 1,000"
floor   # warm the server once
measure "floor: curl, the same 100 pages" bash -c "$(declare -f floor); BASE='$BASE' ID='$ID' floor"
measure "capacity: curl, 3 pages at a time" bash -c "$(declare -f parallel); BASE='$BASE' ID='$ID' PAR=3 parallel"
measure "capacity: curl, 6 pages at a time" bash -c "$(declare -f parallel); BASE='$BASE' ID='$ID' PAR=6 parallel"
measure "lanceferry HTTP reader (read_source --url)" "$READ" --url "http://127.0.0.1:$PORT" canvas_explanations 1000
measure "chromadb HttpClient get() pages" "$VENV/bin/python" scripts/bench_python_get.py --url "127.0.0.1:$PORT" canvas_explanations 1000
measure "lanceferry apply (copy + validation)" "$BIN" apply "$OUT/plan.yaml" --auto-approve
grep -E "copy \`|validate \`" "$OUT/last.err" | head -3 || true
