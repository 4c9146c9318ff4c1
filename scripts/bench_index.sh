#!/usr/bin/env bash
# Vector index defaults, for docs/performance.md ("Index defaults"). Run from
# the repository root:
#   bash scripts/bench_index.sh
# For each data set, for each index configuration, in one run (release
# build): a fresh `lanceferry apply` (the copy, then the index), the index
# step's time from the apply's report, the index's size on disk, then
# `lanceferry verify --json` with `validate.search` (200 seeded queries,
# recall@10 against brute force over the table, at LanceDB's default query
# settings) for the recall and LanceDB's queries a second.
#
# Data sets (written once by chromadb 1.5.9 with scripts/make_large.py into
# ~/.cache/lanceferry-bench, cosine space):
#   gaussian-100k   100,000 x 1536 Gaussian noise (the other benchmarks' set)
#   clustered-100k  100,000 x 1536 clustered, unit length (closer to text embeddings)
#   gaussian-1m     1,000,000 x 128 Gaussian noise
# DATASETS="gaussian-100k clustered-100k" and CONFIGS="ivf_pq auto" narrow a
# run to some of them.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lanceferry-target}"
BENCH_DIR="${BENCH_DIR:-$HOME/.cache/lanceferry-bench}"
PY="${LANCEFERRY_VENVS:-$HOME/.cache/lanceferry-venvs}/chroma-1.5.9/bin/python"
scripts/setup-python.sh

declare -A DATA=(
  [gaussian-100k]="large-100000x1536 100000 1536 gaussian"
  [clustered-100k]="clustered-100000x1536 100000 1536 clustered"
  [gaussian-1m]="large-1000000x128 1000000 128 gaussian"
)
declare -A CONFIG=(
  [ivf_pq]="type: ivf_pq"
  [ivf_pq_iter10]="type: ivf_pq, max_iterations: 10"
  [ivf_pq_4bit]="type: ivf_pq, num_bits: 4"
  [ivf_flat]="type: ivf_flat"
  [ivf_sq]="type: ivf_sq"
  [ivf_rq]="type: ivf_rq"
  [ivf_hnsw_sq]="type: ivf_hnsw_sq"
  [auto]="type: auto"
)
DATASETS="${DATASETS:-gaussian-100k clustered-100k gaussian-1m}"
CONFIGS="${CONFIGS:-ivf_pq ivf_pq_iter10 ivf_pq_4bit ivf_flat ivf_sq ivf_rq ivf_hnsw_sq auto}"

for d in $DATASETS; do
  read -r dir count dim kind <<<"${DATA[$d]}"
  if [ ! -f "$BENCH_DIR/$dir/.ready" ]; then
    rm -rf "${BENCH_DIR:?}/$dir"
    "$PY" scripts/make_large.py "$BENCH_DIR/$dir" "$count" "$dim" canvas_explanations "$kind"
    touch "$BENCH_DIR/$dir/.ready"
  fi
done
cargo build --release --locked -q --bin lanceferry
BIN="$CARGO_TARGET_DIR/release/lanceferry"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; commit $(git rev-parse --short HEAD)"
printf '%-15s %-15s %-12s %9s %9s %8s %8s %9s\n' data config built index_s recall10 worst10 q_per_s index_MB
for d in $DATASETS; do
  read -r dir count dim kind <<<"${DATA[$d]}"
  for c in $CONFIGS; do
    rm -rf "$OUT/lancedb" "$OUT/state"
    cat > "$OUT/plan.yaml" <<YAML
version: 1
name: bench-index
source: { chroma: { path: $BENCH_DIR/$dir } }
target: { lancedb: { uri: $OUT/lancedb } }
state: { path: $OUT/state }
collections:
  - source: canvas_explanations
    mode: create
    columns:
      - { name: vector, from: embedding, dim: $dim }
      - { name: doc_id, from: id }
    indexes:
      - { column: vector, ${CONFIG[$c]} }
    validate: { sample: 10, search: { queries: 200, k: 10 } }
YAML
    "$BIN" apply "$OUT/plan.yaml" --auto-approve > "$OUT/apply.out" 2> "$OUT/apply.err" || {
      cat "$OUT/apply.err" >&2; exit 1; }
    "$BIN" verify "$OUT/plan.yaml" --json > "$OUT/verify.json" 2> "$OUT/verify.err" || {
      cat "$OUT/verify.err" >&2; exit 1; }
    "$PY" - "$d" "$c" "$OUT" <<'PYEOF'
import datetime, glob, json, os, re, sys
d, c, out = sys.argv[1:4]
report = json.load(open(glob.glob(out + "/state/reports/*.json")[0]))
def secs(s):
    f = lambda t: datetime.datetime.fromisoformat(t.replace("Z", "+00:00"))
    return (f(s["finished"]) - f(s["started"])).total_seconds()
index_s = sum(secs(s) for k, s in report["steps"].items() if k.startswith("index"))
err = open(out + "/apply.err").read()
m = re.search(r"built as `([a-z_]+)`", err)
def find(o, key):
    if isinstance(o, dict):
        if key in o:
            return o[key]
        o = list(o.values())
    if isinstance(o, list):
        for v in o:
            r = find(v, key)
            if r is not None:
                return r
    return None
s = find(json.load(open(out + "/verify.json")), "search")
size = sum(os.path.getsize(p) for p in glob.glob(out + "/lancedb/*.lance/_indices/**", recursive=True) if os.path.isfile(p))
built = m.group(1) if m else (s.get("index") or "none").lower()
print(f"{d:<15} {c:<15} {built:<12} {index_s:9.2f} {s['recall_mean']:9.3f} {s['recall_worst_decile']:8.3f} {s['lance_queries_per_second']:8.0f} {size/1e6:9.1f}")
PYEOF
  done
done
