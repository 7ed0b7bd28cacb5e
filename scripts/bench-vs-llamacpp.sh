#!/usr/bin/env bash
# Side-by-side speed of vlm-run and llama.cpp on the same GGUF file and the same device, in
# one run: prefill and decode tokens/s of each, and their ratio.
#
#   scripts/bench-vs-llamacpp.sh LLAMA_BENCH MODEL.gguf [DECODE_TOKENS] [REPEATS]
#
# LLAMA_BENCH is the `llama-bench` binary of a llama.cpp build you made yourself (this repo
# holds none of its code and builds nothing of it). For its Vulkan backend on lavapipe, set
# GGML_VK_VISIBLE_DEVICES=0. Extra llama-bench flags go in LLAMA_BENCH_ARGS (default
# "-ngl 99": every layer on the GPU backend). vlm-run is target/release/vlm-run, or $VLM_RUN.
# Prefill is measured on the same number of prompt tokens in both engines: vlm-run's bench
# prompt, whose length llama-bench then gets as -p; and decode after that many tokens, as
# llama-bench's -d (depth), where the build has it.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
LLAMA_BENCH=$1
MODEL=$2
GEN=${3:-64}
REPS=${4:-3}
VLM_RUN=${VLM_RUN:-"$(dirname "$0")/../target/release/vlm-run"}
[ -x "$LLAMA_BENCH" ] || { echo "error: $LLAMA_BENCH is not an executable llama-bench" >&2; exit 1; }
[ -x "$VLM_RUN" ] || { echo "error: $VLM_RUN not built (cargo build --release)" >&2; exit 1; }
[ -f "$MODEL" ] || { echo "error: model $MODEL does not exist" >&2; exit 1; }
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

ours=$("$VLM_RUN" bench --model "$MODEL" -n "$GEN" --repeat "$REPS" --json)
prompt=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["prompt_tokens"])' "$ours")
args=${LLAMA_BENCH_ARGS:--ngl 99}
theirs_pp=$("$LLAMA_BENCH" -m "$MODEL" -p "$prompt" -n 0 -r "$REPS" -o json $args 2>/dev/null)
# decode after the same prompt as vlm-run's (-d: that many tokens in the cache first, untimed);
# builds older than llama-bench's -d decode from an empty cache instead
theirs_tg=$("$LLAMA_BENCH" -m "$MODEL" -p 0 -n "$GEN" -d "$prompt" -r "$REPS" -o json $args 2>/dev/null) ||
  theirs_tg=$("$LLAMA_BENCH" -m "$MODEL" -p 0 -n "$GEN" -r "$REPS" -o json $args 2>/dev/null)
theirs=$(python3 -c 'import json,sys; print(json.dumps(json.loads(sys.argv[1]) + json.loads(sys.argv[2])))' "$theirs_pp" "$theirs_tg")

python3 - "$ours" "$theirs" "$MODEL" <<'PY'
import json, sys
ours = json.loads(sys.argv[1])
theirs = json.loads(sys.argv[2])
pp = next(r for r in theirs if r["n_prompt"] > 0 and r["n_gen"] == 0)
tg = next(r for r in theirs if r["n_gen"] > 0 and r["n_prompt"] == 0)
backend = pp.get("backends", "?")
dev = pp.get("gpu_info") or pp.get("cpu_info", "?")
print(f"model: {sys.argv[3]}")
print(f"vlm-run: {ours['device']}")
print(f"llama.cpp: {backend} on {dev} (build {pp.get('build_commit', '?')})")
print()
print("| engine | prefill tok/s | decode tok/s |")
print("|---|---|---|")
print(f"| vlm-run | {ours['prefill_tokens_per_s']:.1f} | {ours['decode_tokens_per_s']:.2f} |")
print(f"| llama.cpp | {pp['avg_ts']:.1f} | {tg['avg_ts']:.2f} |")
print(f"| ratio (vlm-run / llama.cpp) | {ours['prefill_tokens_per_s'] / pp['avg_ts']:.2f} | "
      f"{ours['decode_tokens_per_s'] / tg['avg_ts']:.2f} |")
print()
print(f"prompt {ours['prompt_tokens']} tokens, {tg['n_gen']} decoded (llama.cpp: after "
      f"{tg.get('n_depth', 0)} tokens in the cache); vlm-run: median of runs after a warm-up; "
      f"llama.cpp: mean of {len(pp.get('samples_ts', [])) or '?'} runs")
PY
