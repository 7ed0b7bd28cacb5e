#!/usr/bin/env bash
# Tune PosPrune's constants on the validation split (never on test), at the smallest budget
# (B=28: LLaVA-1.5's 64 of 576, scaled to the tiny model's 256 visual tokens). Each line is one
# setting; compare with the unpruned line at the top. README's defaults
# come from its runs, which docs/default-model.md records.
#
#   bash scripts/vqa/tune_pruning.sh [N] [B]   (defaults: N=799, the whole val split; B=28)
# About 20 minutes on a 2-core machine with lavapipe.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-799}
B=${2:-28}
BIN=target/release/vlm-run
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}  # else Mesa prints an "error:" line before vlm-run's own
MODEL=weights/tiny-llava-vqa
DATA=data/vqa/val.jsonl
[ -f "$DATA" ] || { echo "missing $DATA: run python3 scripts/vqa/make_dataset.py --out data/vqa" >&2; exit 1; }
cargo build --release --quiet
CAL=$(mktemp -d)/calibration.json
$BIN calibrate --model $MODEL -o "$CAL" >/dev/null 2>&1

score() {  # label, then eval options; a failed run (a budget out of reach) prints "–: why"
  local label=$1; shift
  local out acc err
  err=$(mktemp)
  if out=$($BIN eval --model $MODEL --data $DATA --limit "$N" --json "$@" 2>"$err"); then
    acc=$(python3 -c 'import json,sys; t=json.loads(sys.stdin.readline())["overall"]; print("%.1f%% (%d)" % (100 * t["right"] / t["total"], t["right"]))' <<<"$out")
  else
    acc="–: $(grep -m1 error "$err" | cut -c1-60)"
  fi
  rm -f "$err"
  printf '%-44s %s\n' "$label" "$acc"
}

score "none" --prune none
for m in fastv pore divprune; do score "$m" --prune $m --keep $B; done
# PosPrune's layers after K hold B2 < B tokens (they pay for layer K's B1): DivPrune at that
# count says what the same later-layer budget buys an encoder-side method
IMG=$(ls tests/fixtures/vqa-sample/images/*.png | head -1)
B2=$($BIN --model $MODEL --image "$IMG" --prompt "How many circles are there?" --max-tokens 1 \
  --prune posprune --keep $B --stats 2>&1 | sed -n 's/.*kept [0-9]* at the encoder, \([0-9]*\) from layer.*/\1/p')
score "divprune at PosPrune's B2=$B2" --prune divprune --keep "$B2"
score "posprune (defaults)" --prune posprune --keep $B
score "posprune calibrated" --prune posprune --keep $B --calibration "$CAL"
score "posprune pbc-query last" --prune posprune --keep $B --pbc-query last
for f in 0 0.3 0.6; do score "posprune arp-floor $f" --prune posprune --keep $B --arp-floor $f; done
for r in 2 8; do score "posprune arp-regions $r" --prune posprune --keep $B --arp-regions $r; done
for l in 0 0.2 0.3 0.5 0.6 0.8 1; do
  score "posprune mmr-lambda $l" --prune posprune --keep $B --mmr-lambda $l
done
score "posprune arp-regions 2, mmr-lambda 0.2" --prune posprune --keep $B --arp-regions 2 --mmr-lambda 0.2
# (the default B1 on this 8-layer decoder is 41 at B=28; PRUNING.md's is 2B)
for k in $B $((B + 4)) $((B + 12)) $((2 * B)) $((2 * B + 16)) 128; do
  score "posprune arp-keep $k" --prune posprune --keep $B --arp-keep $k
done
# K=2: layer 1's text attention decides; layers 0 and 1 both hold B1
for k in $B $((B + 4)) $((2 * B)); do
  score "posprune prune-layer 2, arp-keep $k" --prune posprune --keep $B --prune-layer 2 --arp-keep $k
done
