#!/usr/bin/env bash
# Do the GPU row's newer attention kernels, and decoding one step ahead, pay on this device?
# Runs `vlm-run bench` on a synthetic shape with each switch in turn, alternating the order
# every round so that a slow spell hits every side alike, and prints a markdown table of
# the medians:
#   - default: every newer kernel (flash_attention.wgsl for prefill, decode_attention.wgsl
#     for decode);
#   - VLM_RUN_DECODE_ATTN=0: decode attention by attention.wgsl's attn_split and attn_merge;
#   - VLM_RUN_DECODE_ONE=1: decode attention over caches of up to 256 rows (the bench's are
#     72) by decode_one, one workgroup per head walking the cache: one dispatch a layer
#     instead of decode_split and decode_merge;
#   - VLM_RUN_FLASH_ATTN=0: prefill attention by attention.wgsl's one-row-per-invocation tiles;
#   - VLM_RUN_DECODE_AHEAD=0: each decode step submitted only after the previous token is
#     read back (the default submits one step ahead).
# Then the default's passes by kernel, from device timestamps (VLM_RUN_PROFILE=gpu).
# With ATTN_PROBE (a release build of examples/attn_probe.rs: `cargo build --release
# --example attn_probe`, then target/release/examples/attn_probe) it also times each kernel
# pair alone: decode over 72 and 648 cached keys (and decode_one over 72), prefill at the 7B decoder's and the CLIP-L
# tower's shapes.
#
#   scripts/gpu-kernel-ab.sh VLM_RUN [ATTN_PROBE] [SHAPE] [ROUNDS]
#
# SHAPE: llava-1.5-7b (default) or tiny; ROUNDS 2 (each a bench of --repeat 3 per side).
set -euo pipefail
if [ $# -lt 1 ]; then
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
BIN=$1
PROBE=${2:-}
SHAPE=${3:-llava-1.5-7b}
ROUNDS=${4:-2}
[ -x "$BIN" ] || { echo "error: $BIN is not an executable vlm-run" >&2; exit 1; }
[ -z "$PROBE" ] || [ -x "$PROBE" ] || { echo "error: $PROBE is not an executable attn_probe" >&2; exit 1; }
command -v python3 >/dev/null || { echo "error: python3 is needed to read the JSON" >&2; exit 1; }
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

SIDES=("default" "VLM_RUN_DECODE_ATTN=0" "VLM_RUN_DECODE_ONE=1" "VLM_RUN_FLASH_ATTN=0"
  "VLM_RUN_DECODE_AHEAD=0")
side_env() { [ "$1" = default ] && echo "VLM_RUN_UNUSED=0" || echo "$1"; }
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for ((r = 0; r < ROUNDS; r++)); do
  order=("${SIDES[@]}")
  if ((r % 2 == 1)); then
    order=()
    for ((i = ${#SIDES[@]} - 1; i >= 0; i--)); do order+=("${SIDES[$i]}"); done
  fi
  for side in "${order[@]}"; do
    line=$(env "$(side_env "$side")" "$BIN" bench --synthetic "$SHAPE" --repeat 3 --json | tail -1)
    echo "$line" >&2
    printf '%s\t%s\n' "$side" "$line" >>"$out"
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = {}
for l in open(sys.argv[1]):
    side, js = l.rstrip("\n").split("\t", 1)
    rows.setdefault(side, []).append(json.loads(js))
first = next(iter(rows.values()))[0]
print(f"device: {first['device']}")
print()
print("| kernels | decode tok/s | % of the copy kernel | prefill ms | vision tower ms "
      "| time to first token ms |")
print("|---|---|---|---|---|---|")
med = lambda side, k: statistics.median(r[k] for r in rows[side])
for side in rows:
    print(f"| {side} | {med(side, 'decode_tokens_per_s'):.1f} "
          f"| {med(side, 'decode_bandwidth_pct_of_copy'):.0f}% | {med(side, 'prefill_ms'):.1f} "
          f"| {med(side, 'vision_encoder_ms'):.1f} | {med(side, 'time_to_first_token_ms'):.1f} |")
PY
echo
echo "Where the default's passes go, by kernel (VLM_RUN_PROFILE=gpu: device timestamps, the"
echo "last of bench's two requests):"
VLM_RUN_PROFILE=gpu "$BIN" bench --synthetic "$SHAPE" --repeat 1 2>&1 >/dev/null |
  awk '/^device timestamps/ { buf = "" } { buf = buf $0 "\n" } END { printf "%s", buf }'
[ -n "$PROBE" ] || exit 0
echo
for side in "${SIDES[@]:0:3}"; do
  for kv in 72 648; do
    # decode_one takes caches of up to 256 rows: at 648 it is the default's split pass
    [ "$side" = "${SIDES[2]}" ] && [ "$kv" -gt 256 ] && continue
    echo "decode, $kv keys, $side:"
    env DECODE=1 "$(side_env "$side")" "$PROBE" 1 "$kv" 32 32 128 0 20
  done
done
for side in default "${SIDES[3]}"; do
  echo "prefill, 584 rows x 32 heads of 128, causal, $side:"
  env "$(side_env "$side")" "$PROBE" 584 584 32 32 128 1 5
  echo "vision tower, 577 rows x 16 heads of 64, $side:"
  env "$(side_env "$side")" "$PROBE" 577 577 16 16 64 0 5
done
