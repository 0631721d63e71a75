#!/usr/bin/env bash
# Issue 19's GPU benchmarks as ONE command for a device session (one H100/H200; about 10 minutes a command):
#
#   bench/gpu.sh OUTDIR            # writes OUTDIR/gpu.log, OUTDIR/train_gpu.jsonl, OUTDIR/campaign-*.json
#
# In priority order, each part under its own `timeout`, all within BUDGET_S (default 540 s from the start):
#   1. train: bench/train_gpu.sh's rows SD 1.5 512 px batch 1, SDXL 1024 px batch 1, SD 1.5 512 px batch 4, each
#      with compile none (reference and brandtune) then regional (brandtune; "first step s (compile)" beside the
#      median of the later steps). They may use the budget up to CAMPAIGN_RESERVE_S (default 200 s) before its end;
#      a row that cannot start in time is skipped and says so.
#   2. campaign-sdxl: bench/campaign.py --arch sdxl: run_campaign from @champion (fused, batched) against a plain
#      diffusers loop (load_lora_weights, one call per image), 10 variations x 3 settings at 1024 px, s/image.
#   3. campaign-flux: FLUX.1 at 1024 px is not built (bench/campaign.py's docstring says why): on a GPU this part
#      only says so; on the CPU it runs builtin:tiny-flux.
# At the end, a summary of the train rows (median and first step per row and variant) from train_gpu.jsonl.
#
# Environment: PYTHON (default python3), DEVICE (cuda), BUDGET_S (540), CAMPAIGN_RESERVE_S (200), PARTS (default
# "train campaign-sdxl campaign-flux"), TRAIN_MATRIX (default "sd15:512:1 sdxl:1024:1 sd15:512:4"), TRAIN_STEPS
# (20), COMPILE ("none regional"), THREADS (8), CAMPAIGN_LIMIT_S (300 per campaign), CAMPAIGN_ARGS (extra flags for
# bench/campaign.py). TINY=1 is the CPU check of this very script (tests/test_bench_gpu.py), e.g.
#   DEVICE=cpu TINY=1 THREADS=1 TRAIN_STEPS=2 CAMPAIGN_ARGS="--variations 1 --steps 2" bench/gpu.sh OUT
# which trains builtin:tiny (train matrix "tiny:64:1", fp32) and runs the campaigns on builtin:tiny and tiny-flux.
# COMPILE="none regional reduce-overhead" adds CUDA-graph rows (TrainConfig.compile reduce-overhead: the whole UNet
# compiled with CUDA graphs; brandtune then trains centre crops, one shape, as the reference does).
# gpu.log and train_gpu.jsonl are appended to, so a session with less time can split the work into two commands:
#   PARTS=train bench/gpu.sh OUT; PARTS=campaign-sdxl CAMPAIGN_RESERVE_S=0 bench/gpu.sh OUT
# Estimated on an H100 from last month's H200 rows (not yet run): ~60 s a train row, ~150-200 s for campaign-sdxl
# (build and train ~60 s, then 2 x 30 images at 1024 px); a row or campaign cut by its timeout says so.
set -u
out=${1:?usage: bench/gpu.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
start=$(date +%s)
deadline=$((start + ${BUDGET_S:-540}))
mkdir -p "$out"
log="$out/gpu.log"
say() { echo "$*" | tee -a "$log"; }
if [ -n "${TINY:-}" ]; then
    matrix=${TRAIN_MATRIX:-tiny:64:1} precision=no campaign_arch=tiny
else
    matrix=${TRAIN_MATRIX:-sd15:512:1 sdxl:1024:1 sd15:512:4} precision=bf16 campaign_arch=sdxl
fi
say "# bench/gpu.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname); commit $(git rev-parse --short HEAD 2>/dev/null || echo -)"
say "# device $device; budget ${BUDGET_S:-540} s; $(nvidia-smi -L 2>/dev/null | head -1 || true)"
"$py" -c 'import torch, sys; print("# python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tee -a "$log"
failed=0

left() { echo $((deadline - $(date +%s))); }

for part in ${PARTS:-train campaign-sdxl campaign-flux}; do
    case $part in
        train)
            say "=== train rows: $matrix; compile ${COMPILE:-none regional}: $(date -u +%H:%M:%S)"
            LOG="$log" DEADLINE=$((deadline - ${CAMPAIGN_RESERVE_S:-200})) MATRIX="$matrix" DEVICE="$device" \
                MIXED_PRECISION=$precision COMPILE="${COMPILE:-none regional}" PYTHON="$py" \
                bash bench/train_gpu.sh "$out" "${TRAIN_STEPS:-20}" || failed=1
            ;;
        campaign-sdxl | campaign-flux)
            arch=$campaign_arch
            [ "$part" = campaign-flux ] && arch=flux
            if [ "$arch" = flux ] && [ "$device" != cpu ]; then
                say "=== $part skipped: FLUX.1 at 1024 px does not fit a device session (bench/campaign.py)"
                continue
            fi
            limit=$(left)
            [ "$limit" -gt "${CAMPAIGN_LIMIT_S:-300}" ] && limit=${CAMPAIGN_LIMIT_S:-300}
            if [ "$limit" -lt 30 ]; then
                say "=== $part skipped: the time budget is spent (BUDGET_S=${BUDGET_S:-540})"
                continue
            fi
            say "=== $part: bench/campaign.py --arch $arch (limit $limit s): $(date -u +%H:%M:%S)"
            # shellcheck disable=SC2086  # CAMPAIGN_ARGS is a list of flags
            timeout "$limit" "$py" bench/campaign.py --arch "$arch" --device "$device" --threads "${THREADS:-8}" \
                --json "$out/$part.json" ${CAMPAIGN_ARGS:-} >>"$log" 2>&1
            rc=$?
            if [ $rc -ne 0 ]; then
                [ $rc -eq 124 ] && why="timed out after $limit s" || why="exit $rc"
                say "=== $part failed: $why"
                failed=1
            fi
            ;;
        *) say "=== PARTS: unknown part $part (use train, campaign-sdxl, campaign-flux)"; failed=1 ;;
    esac
done

say "=== summary: train rows (s; median and min over the steps after the first; first step carries compile)"
"$py" - "$out/train_gpu.jsonl" <<'EOF' 2>&1 | tee -a "$log"
import json, sys
from pathlib import Path

path = Path(sys.argv[1])
rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
print("| row | compile | variant | median step s | min step s | first step s (compile) | peak GPU MiB |")
print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
for run in rows:
    a = run["args"]
    name = f"{a['arch'] if a['arch'] != 'None' else a['base']} {a['resolution']}px batch {a['batch_size']}"
    for variant, r in run["results"].items():
        print(f"| {name} | {a['compile']} | {variant} | {r['median_step_s']:.4f} | {r['min_step_s']:.4f} | "
              f"{r.get('first_step_s', float('nan')):.3f} | {r.get('peak_gpu_mib', float('nan')):.0f} |")
if not rows:
    print("(no train row finished)")
EOF
say "=== done in $(($(date +%s) - start)) s; exit $failed"
exit $failed
