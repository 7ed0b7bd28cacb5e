#!/usr/bin/env bash
# Measure issue 6's goals for a real GPU on the llava-1.5-7b shape (random weights made on the
# GPU, nothing to download) and print them as a dated markdown block for README:
#   - decode tokens/s, its effective bandwidth, and that as a % of the copy kernel's bandwidth
#     in the same run (goal: f16 decode at >= 70%);
#   - the full shape prefilled with 576 and with 64 visual tokens (FasterVLM keeps 64 before
#     the projector; PosPrune averages 64 per layer), time to first token and prefill ms;
#   - peak GPU memory against weights + KV cache (goal: <= +15%).
#
#   scripts/gpu-goals.sh VLM_RUN [SHAPE] [DTYPE] [REPEAT]
#
# VLM_RUN is a release build of vlm-run (`cargo build --release`: target/release/vlm-run).
# SHAPE is llava-1.5-7b (default) or tiny; DTYPE f16 (default), q8_0, q4_0, q4_1 or q4_k;
# REPEAT 3 (decode: the median; the sweep: the best of REPEAT). On a CPU device try
# `scripts/gpu-goals.sh target/release/vlm-run tiny`: the 7B shape's unpruned prefill takes
# minutes there. The raw JSON lines go to stderr.
set -euo pipefail
if [ $# -lt 1 ]; then
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
BIN=$1
SHAPE=${2:-llava-1.5-7b}
DTYPE=${3:-f16}
REPEAT=${4:-3}
[ -x "$BIN" ] || { echo "error: $BIN is not an executable vlm-run" >&2; exit 1; }
command -v python3 >/dev/null || { echo "error: python3 is needed to read the JSON" >&2; exit 1; }
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

single=$("$BIN" bench --synthetic "$SHAPE" --dtype "$DTYPE" --repeat "$REPEAT" --json)
echo "$single" >&2
# both image shapes (tiny, llava-1.5-7b) encode 576 visual tokens
sweep=$("$BIN" bench --synthetic "$SHAPE" --dtype "$DTYPE" --prune-sweep --sweep-only \
  --budgets 576,64 --methods none,fastervlm,posprune --repeat "$REPEAT" --json)
echo "$sweep" >&2

SINGLE="$single" SWEEP="$sweep" SHAPE="$SHAPE" DTYPE="$DTYPE" python3 - <<'EOF'
import datetime, json, os

s = json.loads(os.environ["SINGLE"].strip().splitlines()[-1])
rows = [json.loads(l) for l in os.environ["SWEEP"].strip().splitlines() if l.startswith("{")]
shape, dtype = os.environ["SHAPE"], os.environ["DTYPE"]
mib = 1 << 20
weights, kv, peak = s["weight_bytes"], s["kv_cache_bytes"], s["peak_gpu_bytes"]
over = 100.0 * (peak / (weights + kv) - 1.0)
pct = s["decode_bandwidth_pct_of_copy"]
print(f"### On {s['device'].split(';')[0]} ({datetime.date.today().isoformat()})")
print()
print(f"`scripts/gpu-goals.sh`: `--synthetic {shape} --dtype {dtype}`; device: {s['device']}.")
print()
print("| measure | value | goal |")
print("|---|---|---|")
print(f"| decode | {s['decode_tokens_per_s']:.1f} tok/s, {s['decode_bandwidth_gb_s']:.1f} GB/s "
      f"| |")
print(f"| copy kernel, same run | {s['copy_bandwidth_gb_s']:.1f} GB/s | |")
print(f"| decode as % of the copy kernel | {pct:.0f}% | >= 70%: "
      f"{'met' if pct >= 70 else 'not met'} |")
print(f"| vision tower | {s['vision_encoder_ms']:.1f} ms | |")
print(f"| prefill, {s['prompt_tokens']} tokens ({s['visual_tokens']} visual) "
      f"| {s['prefill_ms']:.1f} ms, {s['prefill_tokens_per_s']:.0f} tok/s | |")
print(f"| time to first token | {s['time_to_first_token_ms']:.1f} ms | |")
print(f"| peak GPU memory | {peak / mib:.1f} MiB (weights {weights / mib:.1f} + KV "
      f"{kv / mib:.1f} MiB: {over:+.1f}%) | <= +15%: {'met' if over <= 15 else 'not met'} |")
print()
print("| method | B | visual tokens kept | prefill ms | time to first token ms | speed-up "
      "| ideal | share |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    share = "" if r["method"] == "none" else f"{100 * r['speedup'] / r['ideal_speedup']:.0f}%"
    print(f"| {r['method']} | {r['budget']} | {r['visual_tokens_kept']} "
          f"| {r['timings_ms']['prefill']:.1f} | {r['time_to_first_token_ms']:.1f} "
          f"| {r['speedup']:.2f}x | {r['ideal_speedup']:.2f}x | {share} |")
EOF
