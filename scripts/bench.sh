#!/usr/bin/env bash
# Benchmarks for docs/performance.md. Run from the repository root:
#   bash scripts/bench.sh
# Generates (once, cached in $BENCH_DIR) a 100,000 x 1536 collection
# `canvas_explanations` (plus a 1,000-record `canvas_concepts`) with the real
# chromadb 1.5.9 and the original tool's metadata shape, then measures, in
# one run: `cp -r` of the directory (the floor), `lanceferry apply
# plans/canvas.yaml` (release build, including backup, indexes and
# validation, with the per-step times from its report), `lanceferry plan`
# before and after it (it reads counts, schemas and metadata, never vectors),
# `lanceferry verify`,
# the Python pipeline a user would otherwise write, and `tar czf` next to
# lanceferry's backup step. Wall time and peak RSS come from GNU time.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lanceferry-target}"
BENCH_DIR="${BENCH_DIR:-$HOME/.cache/lanceferry-bench}"
N="${N:-100000}"; DIM="${DIM:-1536}"
PY="${LANCEFERRY_VENVS:-$HOME/.cache/lanceferry-venvs}/chroma-1.5.9/bin/python"
scripts/setup-python.sh
DATA="$BENCH_DIR/large-${N}x${DIM}"
if [ ! -f "$DATA/.ready" ]; then
  rm -rf "$DATA"
  "$PY" scripts/make_large.py "$DATA" "$N" "$DIM" canvas_explanations
  touch "$DATA/.ready"
fi
if [ ! -f "$DATA/.concepts" ]; then
  "$PY" scripts/make_large.py "$DATA" 1000 "$DIM" canvas_concepts
  touch "$DATA/.concepts"
fi
BIG="$BENCH_DIR/large-1000000x128"
if [ "${SKIP_BIG:-0}" != 1 ] && [ ! -f "$BIG/.ready" ]; then
  rm -rf "$BIG"
  "$PY" scripts/make_large.py "$BIG" 1000000 128 canvas_explanations
  touch "$BIG/.ready"
fi
cargo build --release --locked -q --bin lanceferry --example read_source
BIN="$CARGO_TARGET_DIR/release/lanceferry"
READ="$CARGO_TARGET_DIR/release/examples/read_source"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

measure() { # name, command...: prints "name wall_s peak_rss_mb"
  local name="$1"; shift
  /usr/bin/time -f "%e %M" -o "$OUT/time" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err" || { cat "$OUT/$name.err" >&2; exit 1; }
  read -r wall rss < "$OUT/time"
  printf '%-28s %8.2f s %8.0f MB\n' "$name" "$wall" "$((rss / 1024))"
}

size_mb=$(du -sm "$DATA" | cut -f1)
echo "data: $DATA ($size_mb MB), $N x $DIM + 1000 x $DIM, chromadb 1.5.9"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
cp -r "$DATA" "$OUT/warm" && rm -rf "$OUT/warm"   # warm the page cache
measure "cp -r (floor)" cp -r "$DATA" "$OUT/copy"
rm -rf "$OUT/copy"
measure "tar czf" tar czf "$OUT/backup.tar.gz" -C "$DATA" .
rm -f "$OUT/backup.tar.gz"
export CHROMA_PATH="$DATA" LANCEDB_URI="$OUT/lancedb" STATE_DIR="$OUT/state" BACKUP_DIR="$OUT/backups"
measure "lanceferry plan (fresh)" "$BIN" plan plans/canvas.yaml
measure "lanceferry apply (canvas)" "$BIN" apply plans/canvas.yaml --auto-approve
measure "lanceferry plan (no changes)" "$BIN" plan plans/canvas.yaml
"$PY" - "$OUT/state/reports" <<'PYEOF'
import glob, json, sys, datetime
r = json.load(open(glob.glob(sys.argv[1] + "/*.json")[0]))
def secs(s):
    f = lambda t: datetime.datetime.fromisoformat(t.replace("Z", "+00:00"))
    return (f(s["finished"]) - f(s["started"])).total_seconds() if s.get("started") and s.get("finished") else 0
for k, s in sorted(r["steps"].items()):
    print(f"    {k:<45} {secs(s):8.2f} s  rows {s.get('rows', 0)}")
PYEOF
measure "lanceferry verify (canvas)" "$BIN" verify plans/canvas.yaml
rm -rf "$OUT/lancedb" "$OUT/state" "$OUT/backups"
# Only the copy, for the like-for-like comparison with the Python pipeline.
cat > "$OUT/copy-only.yaml" <<YAML
version: 1
name: copy-only
source: { chroma: { path: $DATA } }
target: { lancedb: { uri: $OUT/lancedb-copy } }
state: { path: $OUT/state-copy }
collections:
  - source: canvas_explanations
    columns:
      - { name: vector, from: embedding }
      - { name: doc_id, from: id }
      - { name: content, from: document }
      - { name: canvas_file, from: metadata.canvas_file, type: string }
      - { name: node_id, from: metadata.node_id, type: string }
      - { name: metadata_json, from: metadata, type: json }
    validate: { count: exact, ids: true, content: false, metadata: false, sample: 1 }
YAML
measure "lanceferry apply (copy)" "$BIN" apply "$OUT/copy-only.yaml" --auto-approve
# The copy with the canvas plan's validation (every record's values), no
# backup and no indexes.
sed -e 's#validate: .*#validate: { count: exact, ids: true, content: true, metadata: true, sample: all, min_cosine: 0.99 }#' \
  -e "s#lancedb-copy#lancedb-all#" -e "s#state-copy#state-all#" "$OUT/copy-only.yaml" > "$OUT/copy-all.yaml"
measure "lanceferry apply (copy+verify)" "$BIN" apply "$OUT/copy-all.yaml" --auto-approve
cp -r "$DATA" "$OUT/pycopy"   # chromadb may write to the directory it opens
measure "python get()+add pipeline" "$PY" scripts/bench_python_pipeline.py "$OUT/pycopy" "$OUT/lancedb-py" canvas_explanations
cat "$OUT/python get()+add pipeline.out"

# Readers: the whole collection streamed and discarded, vectors included.
echo "readers (canvas_explanations, pages of 1000):"
measure "read: on-disk (lanceferry)" "$READ" --path "$DATA" canvas_explanations 1000
cat "$OUT/read: on-disk (lanceferry).out"
cp -r "$DATA" "$OUT/srvcopy"   # the server may write to its directory
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$(dirname "$PY")/chroma" run --path "$OUT/srvcopy" --host 127.0.0.1 --port "$PORT" > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$OUT"' EXIT
for _ in $(seq 1 150); do
  curl -sf "http://127.0.0.1:$PORT/api/v2/heartbeat" > /dev/null && break
  sleep 0.2
done
measure "read: HTTP (lanceferry)" "$READ" --url "http://127.0.0.1:$PORT" canvas_explanations 1000
cat "$OUT/read: HTTP (lanceferry).out"
measure "read: chromadb HttpClient" "$PY" scripts/bench_python_get.py --url "127.0.0.1:$PORT" canvas_explanations 1000
cat "$OUT/read: chromadb HttpClient.out"
kill $SERVER; wait $SERVER 2>/dev/null || true
cp -r "$DATA" "$OUT/pyread"
measure "read: chromadb PersistentClient" "$PY" scripts/bench_python_get.py --path "$OUT/pyread" canvas_explanations 1000
cat "$OUT/read: chromadb PersistentClient.out"

# Memory does not grow with the collection: 1,000,000 x 128 through the
# same copy-only mapping (validation included).
if [ "${SKIP_BIG:-0}" != 1 ]; then
  sed -e "s#$DATA#$BIG#" -e "s#lancedb-copy#lancedb-big#" -e "s#state-copy#state-big#" \
    "$OUT/copy-only.yaml" > "$OUT/big.yaml"
  measure "lanceferry apply (1M x 128)" "$BIN" apply "$OUT/big.yaml" --auto-approve
fi
