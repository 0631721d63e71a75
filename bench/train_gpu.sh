#!/usr/bin/env bash
# The GPU matrix of bench/train.py: SD-1.5- and SDXL-architecture models built from config with random weights,
# 512 and 1024 px, bf16, batch 1 and 4, LoRA rank 16, in order of interest, each run under its own time limit.
#
#   bench/train_gpu.sh OUTDIR [STEPS]        # writes OUTDIR/train_gpu.log (the tables) and OUTDIR/train_gpu.jsonl
#
# Environment: PYTHON (default python3), DEVICE (default cuda), MIXED_PRECISION (default bf16), RUN_LIMIT_S (default
# 240, per run), MATRIX (default below; "arch:px:batch" words). One BRANDTUNE_HOME serves all runs, so the sample
# dataset is ingested once and each architecture is built once.
set -u
out=${1:?usage: bench/train_gpu.sh OUTDIR [STEPS]}
steps=${2:-30}
py=${PYTHON:-python3}
matrix=${MATRIX:-"sd15:512:1 sd15:512:4 sdxl:1024:1 sdxl:1024:4 sd15:1024:1 sd15:1024:4 sdxl:512:1 sdxl:512:4"}
home=$(mktemp -d "${TMPDIR:-/tmp}/brandtune-bench-gpu-XXXXXX")
mkdir -p "$out"
log="$out/train_gpu.log"
failed=0
for cell in $matrix; do
    IFS=: read -r arch px bs <<<"$cell"
    echo "=== $arch ${px}px batch $bs: $(date -u +%H:%M:%S)" | tee -a "$log"
    timeout "${RUN_LIMIT_S:-240}" "$py" bench/train.py --arch "$arch" --device "${DEVICE:-cuda}" \
        --mixed-precision "${MIXED_PRECISION:-bf16}" --resolution "$px" --batch-size "$bs" --rank 16 \
        --steps "$steps" --threads 8 --home "$home" --json "$home/result.json" >>"$log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
        cat "$home/result.json" >>"$out/train_gpu.jsonl" && echo >>"$out/train_gpu.jsonl"
    else
        echo "=== $arch ${px}px batch $bs failed: exit $rc" | tee -a "$log"
        failed=1
    fi
done
exit $failed
