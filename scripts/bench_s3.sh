#!/usr/bin/env bash
# Local directory vs S3 endpoint, for docs/performance.md. Run from the
# repository root:
#   bash scripts/bench_s3.sh
# The same apply of the bench data (100,000 x 1536 `canvas_explanations`,
# scripts/make_large.py with chromadb 1.5.9, cached as scripts/bench.sh
# makes it; `mode: create`, count and id-set validation, no index) into a
# local directory and into `s3://` on a loopback S3 endpoint (`moto_server`
# from the `moto` venv, in memory, started and stopped here by PID), in one
# run, release build; wall time and peak RSS from GNU time. The endpoint is
# a Python emulator on the same 2 cores: it measures the object-store code
# path and its request pattern, not a real S3's bandwidth.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lanceferry-target}"
BENCH_DIR="${BENCH_DIR:-$HOME/.cache/lanceferry-bench}"
VENVS="${LANCEFERRY_VENVS:-$HOME/.cache/lanceferry-venvs}"
scripts/setup-python.sh chroma-1.5.9 moto
DATA="$BENCH_DIR/large-100000x1536"
if [ ! -f "$DATA/.ready" ]; then
  rm -rf "$DATA"
  "$VENVS/chroma-1.5.9/bin/python" scripts/make_large.py "$DATA" 100000 1536 canvas_explanations
  touch "$DATA/.ready"
fi
cargo build --release --locked -q --bin lanceferry
BIN="$CARGO_TARGET_DIR/release/lanceferry"
OUT=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$VENVS/moto/bin/moto_server" -H 127.0.0.1 -p "$PORT" > "$OUT/moto.log" 2>&1 &
MOTO=$!
trap 'kill $MOTO 2>/dev/null; rm -rf "$OUT"' EXIT
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_DEFAULT_REGION=us-east-1
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
"$VENVS/moto/bin/python" -c "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:$PORT').create_bucket(Bucket='bench')"

measure() { # name, command...
  local name="$1"; shift
  /usr/bin/time -f "%e %M" -o "$OUT/time" "$@" > "$OUT/last.out" 2> "$OUT/last.err" || {
    cat "$OUT/last.err" >&2; exit 1; }
  read -r wall rss < "$OUT/time"
  printf '%-40s %8.2f s %8.0f MB\n' "$name" "$wall" "$((rss / 1024))"
}

plan() { # name, target block
  cat > "$OUT/$1.yaml" <<YAML
version: 1
name: $1
source: { chroma: { path: $DATA } }
$2
state: { path: $OUT/state-$1 }
defaults: { batch_size: 1000 }
collections:
  - source: canvas_explanations
    mode: create
    validate: { sample: 100 }
YAML
}
plan local "target: { lancedb: { uri: $OUT/lancedb } }"
plan s3 "target:
  lancedb:
    uri: s3://bench/lancedb
    storage_options: { aws_endpoint: 'http://127.0.0.1:$PORT', aws_region: us-east-1, allow_http: 'true', aws_access_key_id: '\${AWS_ACCESS_KEY_ID}', aws_secret_access_key: '\${AWS_SECRET_ACCESS_KEY}' }"

echo "machine: $(nproc) cores; commit $(git rev-parse --short HEAD); data $DATA"
cp -r "$DATA" "$OUT/warm" && rm -rf "$OUT/warm"
measure "apply to a local directory" "$BIN" apply "$OUT/local.yaml" --auto-approve
measure "apply to s3:// (moto on loopback)" "$BIN" apply "$OUT/s3.yaml" --auto-approve
measure "verify, local" "$BIN" verify "$OUT/local.yaml"
measure "verify, s3://" "$BIN" verify "$OUT/s3.yaml"
