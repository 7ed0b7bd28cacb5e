#!/usr/bin/env bash
# Run the test suite on a GPU machine that has no Rust toolchain (a lent device machine):
# CI runs it on lavapipe only, so the GPU row's kernels (32-lane GEMVs with subgroup
# shuffles, the tiled prefill attention, the split-KV decode attention, f16) are checked
# against their CPU references there only where the tests force them on a CPU device.
#
#   scripts/gpu-tests.sh pack [ARCHIVE]
#       Here: build the release test binaries (`cargo test --release --no-run`), strip them
#       and pack them with vlm-run into ARCHIVE (default .devbin/gpu-tests.tar.xz, ~20 MB).
#   scripts/gpu-tests.sh run [ARCHIVE] [TEST_ARGS...]
#       There, in a copy of this checkout (the fixtures are read from it): unpack, put
#       vlm-run and the checkout where the binaries were built to find them, run every test
#       binary (TEST_ARGS go to each: a name filter, --test-threads=N), and print one line
#       per binary and the failures. Logs go to $OUT when it is set. Exit 1 if any failed.
#
# The test binaries read tests/fixtures and run target/release/vlm-run at the absolute path
# of the checkout they were built in; `run` links that path to this checkout when it does
# not exist (so run it as a user who may create it). tests/smollm2.rs passes vacuously
# without weights/SmolLM2-135M-Instruct.Q4_1.gguf (98 MB), which is not packed.
set -euo pipefail
usage() {
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}
[ $# -ge 1 ] || usage
cd "$(dirname "$0")/.."
verb=$1
shift
archive=${1:-.devbin/gpu-tests.tar.xz}
[ $# -eq 0 ] || shift

case $verb in
pack)
  command -v cargo >/dev/null || { echo "error: pack needs cargo" >&2; exit 1; }
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  echo "building the release test binaries (cargo test --release --no-run)..." >&2
  cargo test --release --no-run --message-format=json-render-diagnostics >"$stage/build.json"
  python3 - "$stage/build.json" >"$stage/list" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    j = json.loads(line)
    if j.get("reason") == "compiler-artifact" and j.get("executable") and j["profile"]["test"]:
        kind = "lib" if "lib" in j["target"]["kind"] else j["target"]["name"]
        print(kind, j["executable"])
PY
  mkdir -p "$stage/pack/tests"
  while read -r name path; do
    strip -o "$stage/pack/tests/$name" "$path"
  done <"$stage/list"
  strip -o "$stage/pack/vlm-run" target/release/vlm-run
  pwd >"$stage/pack/manifest_dir"
  git rev-parse --short HEAD >"$stage/pack/commit" 2>/dev/null || echo unknown >"$stage/pack/commit"
  mkdir -p "$(dirname "$archive")"
  tar -cJf "$archive" -C "$stage/pack" .
  echo "$archive: $(wc -l <"$stage/list") test binaries at $(cat "$stage/pack/commit"), $(du -h "$archive" | cut -f1)"
  ;;
run)
  [ -f "$archive" ] || { echo "error: $archive is missing (scripts/gpu-tests.sh pack)" >&2; exit 1; }
  export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
  unpacked=$(mktemp -d)
  tar -xJf "$archive" -C "$unpacked"
  built_in=$(cat "$unpacked/manifest_dir")
  here=$(pwd -P)
  if [ "$(cd "$built_in" 2>/dev/null && pwd -P)" != "$here" ]; then
    if [ -e "$built_in" ]; then
      echo "error: the binaries read fixtures from $built_in, which exists and is not this checkout" >&2
      exit 1
    fi
    mkdir -p "$(dirname "$built_in")"
    ln -s "$here" "$built_in"
  fi
  mkdir -p target/release
  cp "$unpacked/vlm-run" target/release/vlm-run
  logs=${OUT:-$unpacked}
  mkdir -p "$logs"
  echo "test binaries from $(cat "$unpacked/commit"), run in $here"
  failed=()
  for t in "$unpacked"/tests/*; do
    name=$(basename "$t")
    start=$(date +%s)
    status=ok
    "$t" "$@" >"$logs/test-$name.log" 2>&1 || { status=FAILED; failed+=("$name"); }
    summary=$(grep -E '^test result:' "$logs/test-$name.log" | tail -1 || true)
    printf '%-18s %-6s %4ss  %s\n' "$name" "$status" "$(($(date +%s) - start))" "$summary"
  done
  for name in "${failed[@]}"; do
    log="$logs/test-$name.log"
    echo
    echo "== $name ($log)"
    if grep -q '^failures:$' "$log"; then
      sed -n '/^failures:$/,$p' "$log" | head -100
    else
      tail -20 "$log"
    fi
  done
  [ ${#failed[@]} -eq 0 ] || exit 1
  ;;
*) usage ;;
esac
