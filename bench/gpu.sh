#!/usr/bin/env bash
# The GPU rows of docs/BENCHMARKS.md, in one prepared run (about 3-5 minutes on an H100/H200-class GPU; every
# step has its own timeout, 8 minutes in all at worst). Needs: this repo, .venv with a CUDA build of torch
# (see README), a CUDA GPU. No weights are downloaded: SD-1.5- and SDXL-shaped random-weight pipelines (the same
# compute as the real models) are built on the GPU in fp16.
#   1. bench/gpu_bench.py      plain diffusers generation vs the same call inside trace (ratio, target <= 1.10),
#                              peak extra memory, mask extraction time per method       -> bench/results/gpu_generation.md
#   2. bench/sdxl_capture.py   SDXL's UNet at 1024 px per pass, memory flat in steps     -> bench/results/gpu_sdxl_capture.md
#   3. bench/predict_latency.py /predict latency vs its UNet pass, SD 1.5 (512 px) and SDXL (1024 px), over HTTP
#                                                                                        -> bench/results/gpu_predict_{sd15,sdxl}.md
#   4. bench/run_all --collect rebuilds docs/BENCHMARKS.md with these sections.
# Usage: bench/gpu.sh            (on the GPU machine; refuses to run without CUDA)
#        bench/gpu.sh --dry-run  (any machine: every step on CPU with the tiny models, results to a temp folder)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error DIFFUSERS_VERBOSITY=error
WORK=$(mktemp -d "${TMPDIR:-/tmp}/seediff-gpu.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
if [ "${1:-}" = "--dry-run" ]; then
  DEV=cpu; TINY=--tiny; UNET=sdxl-tiny; OUT="$WORK/results"; SD_PX=64; XL_PX=64; XL_CAP=256; TASKS=2
  echo "bench/gpu.sh: dry run on CPU with tiny models; results go to $OUT and docs/ is left alone" >&2
else
  if ! python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "bench/gpu.sh: no CUDA GPU here (torch.cuda.is_available() is False in $(command -v python))." >&2
    echo "Run it on a CUDA machine with a CUDA build of torch in .venv, or use --dry-run to check the scripts." >&2
    exit 2
  fi
  DEV=cuda; TINY=; UNET=sdxl; OUT=bench/results; SD_PX=512; XL_PX=1024; XL_CAP=1024; TASKS=8
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
fi
mkdir -p "$OUT"
step() {  # seconds, name, command...
  local limit=$1 name=$2; shift 2
  echo "== $name (at most ${limit}s): $*" >&2
  local t0=$SECONDS
  timeout "$limit" "$@" >&2
  echo "   $name took $((SECONDS - t0)) s" >&2
}
step 240 generation python bench/gpu_bench.py --device "$DEV" $TINY --save-dir "$WORK" --out "$OUT/gpu_generation.md"
step 90 sdxl_capture python bench/sdxl_capture.py --device "$DEV" --unet "$UNET" --size "$XL_CAP" --out "$OUT/gpu_sdxl_capture.md"
step 60 predict_sd15 python bench/predict_latency.py --model "$WORK/sd15" --device "$DEV" --size "$SD_PX" --tasks "$TASKS" --out "$OUT/gpu_predict_sd15.md"
step 90 predict_sdxl python bench/predict_latency.py --model "$WORK/sdxl" --device "$DEV" --size "$XL_PX" --tasks "$TASKS" --out "$OUT/gpu_predict_sdxl.md"
if [ -z "$TINY" ]; then
  bench/run_all --collect
else
  cat "$OUT"/*.md
fi
