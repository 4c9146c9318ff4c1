#!/usr/bin/env bash
# Creates the Python environments the tests use, once, and reuses them:
#   chroma-1.5.9   chromadb 1.5.9 + lancedb + pylance (fixtures, HTTP server,
#                  and the independent reader of the tables we write)
#   chroma-0.6.3   chromadb 0.6.3 (compatibility fixtures)
#   chroma-0.4.24  chromadb 0.4.24 with numpy<2 (compatibility fixtures, API v1)
# Location: $LANCEFERRY_VENVS (default ~/.cache/lanceferry-venvs). A venv is
# complete when its `.ready` marker exists; a half-made one is rebuilt.
set -euo pipefail
root="${LANCEFERRY_VENVS:-$HOME/.cache/lanceferry-venvs}"
mkdir -p "$root"

make_venv() {
  local name="$1"; shift
  local dir="$root/$name"
  if [ -f "$dir/.ready" ]; then return 0; fi
  echo "setup-python: creating $dir ($*)" >&2
  rm -rf "$dir"
  python3 -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check "$@"
  touch "$dir/.ready"
}

make_venv chroma-1.5.9 chromadb==1.5.9 lancedb pylance
make_venv chroma-0.6.3 chromadb==0.6.3
make_venv chroma-0.4.24 chromadb==0.4.24 "numpy<2"
