#!/usr/bin/env bash
# Is build B faster than build A on this machine? Runs `vlm-run bench` of two binaries in
# alternation (A B, then B A, ...), so that a slow spell of a shared machine hits both
# alike, and prints each round and the medians: prefill and decode tokens/s per side, and
# the median of the per-round ratios B / A.
#
#   scripts/ab-bench.sh VLM_RUN_A VLM_RUN_B MODEL [ROUNDS] [DECODE_TOKENS]
#
# Build A from another checkout, e.g. `git worktree add /tmp/base main` and
# `CARGO_TARGET_DIR=/tmp/basetarget cargo build --release` there. MODEL is a GGUF file or a
# model directory. Defaults: 9 rounds of 32 decoded tokens, each a warm-up and one measured
# run. Single runs on a shared 2-core machine move by 10-25%; the median ratio of ~9
# rounds by a few per cent.
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
A=$1
B=$2
MODEL=$3
ROUNDS=${4:-9}
GEN=${5:-32}
for bin in "$A" "$B"; do
  [ -x "$bin" ] || { echo "error: $bin is not an executable vlm-run" >&2; exit 1; }
done
[ -e "$MODEL" ] || { echo "error: model $MODEL does not exist" >&2; exit 1; }
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

one() { "$1" bench --model "$MODEL" -n "$GEN" --repeat 1 --json; }
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for ((r = 0; r < ROUNDS; r++)); do
  # A's line, then B's, whichever ran first
  if ((r % 2 == 0)); then
    a=$(one "$A"); b=$(one "$B")
  else
    b=$(one "$B"); a=$(one "$A")
  fi
  printf '%s\n%s\n' "$a" "$b" >>"$out"
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
a, b = rows[0::2], rows[1::2]
P, D = "prefill_tokens_per_s", "decode_tokens_per_s"
for i, (x, y) in enumerate(zip(a, b)):
    print(f"round {i}: decode A {x[D]:.2f}  B {y[D]:.2f} tok/s; "
          f"prefill A {x[P]:.1f}  B {y[P]:.1f} tok/s")
for key in (P, D):
    ma = statistics.median(x[key] for x in a)
    mb = statistics.median(y[key] for y in b)
    ratio = statistics.median(y[key] / x[key] for x, y in zip(a, b))
    print(f"{key}: median A {ma:.2f}, B {mb:.2f}; median ratio B/A {ratio:.3f}")
PY
