#!/usr/bin/env bash
# Reproduce README's accuracy figures for the trained tiny LLaVA (weights/tiny-llava-vqa):
# unpruned accuracy on the whole test split, the pruning sweep on its first SWEEP questions,
# the positional-bias plot, and one keep-map per method on the same test image.
#
#   bash scripts/vqa/report.sh [SWEEP]   (default SWEEP=998: the whole split; needs data/vqa,
#                                         made by python3 scripts/vqa/make_dataset.py --out data/vqa)
# Writes eval-results/ and docs/vqa/. On a 2-core machine with lavapipe the sweep over the
# whole split took 17 minutes (2026-11-23); the unpruned pass and the plots add a few more.
set -euo pipefail
cd "$(dirname "$0")/../.."
SWEEP=${1:-998}
BIN=target/release/vlm-run
MODEL=weights/tiny-llava-vqa
DATA=data/vqa/test.jsonl
[ -f "$DATA" ] || { echo "missing $DATA: run python3 scripts/vqa/make_dataset.py --out data/vqa" >&2; exit 1; }
cargo build --release --quiet
mkdir -p eval-results docs/vqa

echo "== unpruned, whole test split"
$BIN eval --model $MODEL --data $DATA | tee eval-results/test-unpruned.txt

echo "== sweep, first $SWEEP test questions"
$BIN eval --model $MODEL --data $DATA --limit "$SWEEP" --sweep --out eval-results \
  | tee eval-results/sweep.txt
cp eval-results/sweep.png docs/vqa/sweep.png

echo "== positional bias"
$BIN calibrate --model $MODEL -o eval-results/calibration.json
cp eval-results/calibration.png docs/vqa/positional-bias.png

echo "== keep maps at B=57 (576-token B=128 scaled to 256 tokens; B=28 is out of reach for FastV and PoRe on the 8-layer decoder)"
IMG=data/vqa/images/test/00000.png
for m in fastv fastervlm visionzip divprune pore posprune; do
  $BIN --model $MODEL --image $IMG --prompt "What shape is the small object?" \
    --prune $m --keep 57 --max-tokens 4 --save-keep-map docs/vqa/keep-$m.png
done
cp $IMG docs/vqa/keep-image.png
