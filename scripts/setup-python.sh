#!/usr/bin/env bash
# Creates the Python environments the tests use, once, and reuses them:
#   chroma-1.5.9   chromadb 1.5.9 + lancedb + pylance (fixtures, HTTP server,
#                  and the independent reader of the tables we write)
#   chroma-0.6.3   chromadb 0.6.3 (compatibility fixtures)
#   chroma-0.5.23  chromadb 0.5.23 (compatibility fixtures)
#   chroma-0.4.24  chromadb 0.4.24 with numpy<2 (compatibility fixtures, API v1)
#   moto           moto[server] + boto3 (an S3 endpoint on loopback for the
#                  object-store tests)
# Location: $LANCEFERRY_VENVS (default ~/.cache/lanceferry-venvs).
#
# Safe to run many times at once (tests in several threads and processes
# start it when they find a venv missing):
# - one advisory lock (`flock` on $root/.lock) serialises every creation;
# - a venv is built in a temporary directory, marked `.ready`, and only then
#   renamed into place, so a directory named `chroma-X` is always complete;
# - anything half-made (a `chroma-X` without `.ready` from an older script or
#   a killed run, a leftover `.tmp-*`) is removed and rebuilt under the lock.
# Only the names given as arguments are created (all of them by default).
set -euo pipefail
root="${LANCEFERRY_VENVS:-$HOME/.cache/lanceferry-venvs}"
mkdir -p "$root"

exec 9>"$root/.lock"
flock 9

make_venv() {
  local name="$1"; shift
  local dir="$root/$name"
  if [ -f "$dir/.ready" ]; then return 0; fi
  echo "setup-python: creating $dir ($*)" >&2
  rm -rf "$dir" "$root/.tmp-$name".*
  local tmp
  tmp=$(mktemp -d "$root/.tmp-$name.XXXXXX")
  chmod 755 "$tmp"
  python3 -m venv "$tmp"
  "$tmp/bin/python" -m pip install -q --disable-pip-version-check "$@"
  # Console scripts (`bin/chroma`, `bin/pip`) and `activate` name the
  # directory they were installed in; point them at the final one.
  grep -rlI --null -F "$tmp" "$tmp/bin" | xargs -0 -r sed -i "s|$tmp|$dir|g"
  touch "$tmp/.ready"
  mv -T "$tmp" "$dir"
}

want=("$@")
if [ ${#want[@]} -eq 0 ]; then
  want=(chroma-1.5.9 chroma-0.6.3 chroma-0.5.23 chroma-0.4.24 moto)
fi
for name in "${want[@]}"; do
  case "$name" in
    chroma-1.5.9)  make_venv "$name" chromadb==1.5.9 lancedb pylance ;;
    chroma-0.6.3)  make_venv "$name" chromadb==0.6.3 ;;
    chroma-0.5.23) make_venv "$name" chromadb==0.5.23 "numpy<2" ;;
    chroma-0.4.24) make_venv "$name" chromadb==0.4.24 "numpy<2" ;;
    moto)          make_venv "$name" "moto[server]==5.2.5" boto3 ;;
    *) echo "setup-python: unknown environment $name" >&2; exit 2 ;;
  esac
done
