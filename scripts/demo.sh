#!/usr/bin/env bash
# The main job, from a fresh clone: set up .venv, then synthesize a small labelled dataset with the bundled
# model (offline, no hub) — generated images, per-class masks, overlay previews and one COCO file — and
# score the masks against the bundled model's shape colours. Prints where everything is.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
OUT=${1:-out/demo}
seediff synthesize --model builtin:shapes --classes circle square triangle --per-class 4 \
  --prompt "a {} on a plain background" --seed 0 --out "$OUT"
echo
echo "COCO file:        $OUT/coco.json"
echo "overlay previews: $OUT/overlays/"
