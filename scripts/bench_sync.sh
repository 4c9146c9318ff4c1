#!/usr/bin/env bash
# `mode: sync` benchmark for docs/performance.md. Run from the repository root:
#   bash scripts/bench_sync.sh
# On a copy of the bench data (100,000 x 1536 `canvas_explanations`, written
# by chromadb 1.5.9 with scripts/make_large.py, as scripts/bench.sh makes it),
# in one run, release build, wall time and peak RSS from GNU time:
#   1. the first apply (full copy, validation of every record);
#   2. `plan` and `apply` with nothing changed;
#   3. 1 % of the records changed with the real chromadb (400 documents
#      edited, 300 records added, 300 deleted), then `plan` and `apply`;
#   4. the digest store's size per record, here and (unless SKIP_BIG=1) at
#      1,000,000 x 128;
#   5. the first apply with `sample: all` against the Python pipeline
#      (scripts/bench_python_pipeline.py: chromadb get() pages of 1,000 ->
#      lancedb add, no validation), alternating, three runs each.
# The plan is plans/canvas.yaml's mapping in `mode: sync` with `sample: all`
# (VALIDATE='{ sample: 100 }' for a sampled check), without indexes (their
# build is measured by scripts/bench.sh) or backup.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lanceferry-target}"
BENCH_DIR="${BENCH_DIR:-$HOME/.cache/lanceferry-bench}"
PY="${LANCEFERRY_VENVS:-$HOME/.cache/lanceferry-venvs}/chroma-1.5.9/bin/python"
scripts/setup-python.sh
DATA="$BENCH_DIR/large-100000x1536"
if [ ! -f "$DATA/.ready" ]; then
  rm -rf "$DATA"
  "$PY" scripts/make_large.py "$DATA" 100000 1536 canvas_explanations
  touch "$DATA/.ready"
fi
BIG="$BENCH_DIR/large-1000000x128"
if [ "${SKIP_BIG:-0}" != 1 ] && [ ! -f "$BIG/.ready" ]; then
  rm -rf "$BIG"
  "$PY" scripts/make_large.py "$BIG" 1000000 128 canvas_explanations
  touch "$BIG/.ready"
fi
cargo build --release --locked -q --bin lanceferry
BIN="$CARGO_TARGET_DIR/release/lanceferry"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

measure() { # name, command...: prints "name wall_s peak_rss_mb"
  local name="$1"; shift
  /usr/bin/time -f "%e %M" -o "$OUT/time" "$@" > "$OUT/last.out" 2> "$OUT/last.err" || {
    cat "$OUT/last.err" >&2; exit 1; }
  read -r wall rss < "$OUT/time"
  printf '%-44s %8.2f s %8.0f MB\n' "$name" "$wall" "$((rss / 1024))"
}

plan() { # data dir, dim, out: writes the sync plan
  cat > "$3" <<YAML
version: 1
name: bench-sync
source: { chroma: { path: $1 } }
target: { lancedb: { uri: $OUT/lancedb } }
state: { path: $OUT/state }
defaults: { batch_size: 1000 }
collections:
  - source: canvas_explanations
    mode: sync
    columns:
      - { name: vector, from: embedding, dim: $2 }
      - { name: doc_id, from: id }
      - { name: content, from: document }
      - { name: canvas_file, from: metadata.canvas_file, type: string }
      - { name: node_id, from: metadata.node_id, type: string }
      - { name: metadata_json, from: metadata, type: json }
    validate: ${VALIDATE:-{ sample: all, min_cosine: 0.99, count: exact, ids: true, content: true, metadata: true \}}
YAML
}

store_size() { # prints bytes per record of the digest store
  local f n
  f=$(ls "$OUT"/state/*/digests/canvas_explanations.bin)
  n=$(python3 -c "import struct,sys; print(struct.unpack('<Q', open(sys.argv[1],'rb').read()[16:24])[0])" "$f")
  python3 -c "import sys; b,n=int(sys.argv[1]),int(sys.argv[2]); print(f'digest store: {b:,} bytes for {n:,} records = {b/n:.1f} bytes a record')" "$(stat -c %s "$f")" "$n"
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; commit $(git rev-parse --short HEAD)"
cp -r "$DATA" "$OUT/chroma"
# The copy's writeback would otherwise run during the first apply.
sync
plan "$OUT/chroma" 1536 "$OUT/sync.yaml"
measure "first apply (full copy, every record checked)" "$BIN" apply "$OUT/sync.yaml" --auto-approve
grep -o 'validate `[^`]*`: .*' "$OUT/last.err" | head -1 || true
store_size
measure "plan, nothing changed" "$BIN" plan "$OUT/sync.yaml"
measure "apply, nothing changed" "$BIN" apply "$OUT/sync.yaml" --auto-approve
grep -q "nothing to do" "$OUT/last.out" "$OUT/last.err" || { echo "expected nothing to do" >&2; exit 1; }
"$PY" - "$OUT/chroma" <<'PYEOF'
import os, sys
os.environ["ANONYMIZED_TELEMETRY"] = "False"
import numpy as np, chromadb
col = chromadb.PersistentClient(path=sys.argv[1]).get_collection("canvas_explanations", embedding_function=None)
ids = [f"rec-{i:08d}" for i in range(1000, 1400)]
kept = col.get(ids=ids, include=["embeddings"])
col.update(ids=kept["ids"], documents=[f"edited {i}" for i in kept["ids"]], embeddings=kept["embeddings"])
rng = np.random.default_rng(7)
new = [f"bench-new-{i:05d}" for i in range(300)]
col.add(ids=new, embeddings=rng.standard_normal((300, 1536), dtype=np.float32), documents=new,
        metadatas=[{"canvas_file": "new.canvas", "node_id": n} for n in new])
col.delete(ids=[f"rec-{i:08d}" for i in range(50000, 50300)])
PYEOF
measure "plan, 1 % changed" "$BIN" plan "$OUT/sync.yaml"
grep -o 'sync`: [^)]*)' "$OUT/last.out" | head -1 || true
measure "apply, 1 % changed (every record checked)" "$BIN" apply "$OUT/sync.yaml" --auto-approve
grep -o 'copy `[^`]*`: sync: .*' "$OUT/last.err" | head -1 || true
grep -o 'validate `[^`]*`: .*' "$OUT/last.err" | head -1 || true
measure "plan, nothing changed since" "$BIN" plan "$OUT/sync.yaml"

if [ "${SKIP_BIG:-0}" != 1 ]; then
  rm -rf "$OUT/lancedb" "$OUT/state" "$OUT/chroma"
  plan "$BIG" 128 "$OUT/big.yaml"
  measure "first apply 1,000,000 x 128" "$BIN" apply "$OUT/big.yaml" --auto-approve
  store_size
  measure "plan 1,000,000 x 128, nothing changed" "$BIN" plan "$OUT/big.yaml"
fi

rm -rf "$OUT/lancedb" "$OUT/state" "$OUT/chroma" "$OUT/pipeline"
plan "$DATA" 1536 "$OUT/full.yaml"
for run in 1 2 3; do
  rm -rf "$OUT/lancedb" "$OUT/state" "$OUT/pipeline"; sync
  measure "run $run: apply, sample: all (copy + every row checked)" "$BIN" apply "$OUT/full.yaml" --auto-approve
  sync
  measure "run $run: Python pipeline (get pages -> add)" "$PY" scripts/bench_python_pipeline.py "$DATA" "$OUT/pipeline" canvas_explanations 1000
done
