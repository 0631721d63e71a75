#!/usr/bin/env bash
# The GPU matrix of bench/train.py, in order of interest, each run under its own time limit:
#   - SD-1.5- and SDXL-architecture models built from config with random weights, 512 and 1024 px, bf16, batch 1
#     and 4, LoRA rank 16, each row without and with torch.compile (--compile none, then regional): the issue-19
#     acceptance rows first (SD 1.5 512 px batch 1 and 4, SDXL 1024 px batch 1), then the rest of the old matrix;
#   - after them, the FLUX.1-dev (11.9B) and SD3.5-medium (2.24B) transformers built from their published configs
#     with random bf16 weights (random latents and text embeddings of the real shapes), 512 and 1024 px, batch 1,
#     LoRA rank 16 on brandtune's flow defaults, gradient checkpointing off and on.
# A compiled row's table has "first step s (compile)": the first step's wall, which carries torch.compile's compile
# time; its median and min step are over the later steps (bench/train.py; JSON keys first_step_s, median_step_s).
#
#   bench/train_gpu.sh OUTDIR [STEPS]        # writes OUTDIR/train_gpu.log (the tables) and OUTDIR/train_gpu.jsonl
#   ROWS=flow bench/train_gpu.sh OUTDIR      # only the FLUX.1 / SD3.5 rows: about 6 minutes on one H200
#   bench/gpu.sh OUTDIR                      # the whole device session: these rows, then the campaign table
#
# Environment: PYTHON (default python3), DEVICE (default cuda), MIXED_PRECISION (default bf16), ROWS (sd, flow or
# all; default all), RUN_LIMIT_S (default 240, per SD run), MATRIX (default below; "arch:px:batch[:gc[:compile]]"
# words: gc = gradient checkpointing on, compile = none|regional|full, e.g. "sd15:512:1::regional"; arch "tiny" is
# builtin:tiny on bench/train.py's CPU path), COMPILE (the compile modes of a cell that names none, in order;
# default "none regional"), VARIANTS (bench/train.py --variants for the SD rows; default its own for compile
# none, brandtune alone for a compiled row: the reference stays eager), THREADS (default 8),
# DEADLINE (a `date +%s` second: a row that might end past it is skipped and says so; bench/gpu.sh sets it),
# LOG (default OUTDIR/train_gpu.log), KEEP_HOME (set: keep the temporary BRANDTUNE_HOME, else removed at exit).
# For the flow rows: FLOW_STEPS (timed steps, default 10), FLOW_WARMUP (untimed steps
# before them, default 2), FLOW_LIMIT_S (per run, default 150), FLOW_BUDGET_S (default 570: a flow row is skipped,
# and says so, once it might end past this many seconds after the first flow row started). One BRANDTUNE_HOME
# serves all runs, so the sample dataset is ingested once and each SD architecture is built once; the flow runs
# build their transformer in each child process (seconds on the GPU) and need neither. TINY=1 gives the flow
# rows --tiny (builtin:tiny-flux's / tiny-sd3's transformer): a check of this script on a CPU, e.g.
#   TINY=1 ROWS=flow DEVICE=cpu MIXED_PRECISION=no FLOW_STEPS=2 MATRIX="flux:64:1 sd3:64:1:gc" bench/train_gpu.sh OUT
#   DEVICE=cpu MIXED_PRECISION=no VARIANTS=brandtune MATRIX="tiny:64:1" bench/train_gpu.sh OUT 3   # compile none+regional
#
# Flow rows, estimated on an H200 from FLOPs (not yet run): a FLUX.1-dev step is ~0.2 s at 512 px and ~0.6-0.9 s at
# 1024 px, an SD3.5-medium step under 0.3 s; each child spends ~15 s importing and building first, so a FLUX row
# (two children, 12 steps each) takes ~40-60 s and an SD3.5 row ~30 s: all eight fit in ~6 minutes. FLUX.1-dev at
# 1024 px without checkpointing needs an estimated ~100 GB and comes last: where it does not fit, its table says
# OOM (a result, not a failure). None is skipped by default; FLOW_BUDGET_S skips the tail if the machine is slower.
set -u
out=${1:?usage: bench/train_gpu.sh OUTDIR [STEPS]}
steps=${2:-30}
py=${PYTHON:-python3}
sd_rows="sd15:512:1 sd15:512:4 sdxl:1024:1 sdxl:1024:4 sd15:1024:1 sd15:1024:4 sdxl:512:1 sdxl:512:4"
flow_rows="flux:512:1 flux:1024:1:gc sd3:512:1 sd3:1024:1 flux:512:1:gc sd3:512:1:gc sd3:1024:1:gc flux:1024:1"
case ${ROWS:-all} in
    sd) default=$sd_rows ;;
    flow) default=$flow_rows ;;
    all) default="$sd_rows $flow_rows" ;;
    *) echo "ROWS=${ROWS}: use sd, flow or all" >&2; exit 2 ;;
esac
matrix=${MATRIX:-$default}
home=$(mktemp -d "${TMPDIR:-/tmp}/brandtune-bench-gpu-XXXXXX")
[ -n "${KEEP_HOME:-}" ] || trap 'rm -rf "$home"' EXIT  # built models: GBs on a GPU machine
mkdir -p "$out"
log=${LOG:-$out/train_gpu.log}
failed=0
flow_started=
# one cell per compile mode: "sd15:512:1" runs as sd15:512:1::none then sd15:512:1::regional (flow rows: as named)
cells=()
for cell in $matrix; do
    IFS=: read -r arch px bs gc mode <<<"$cell"
    case $arch in
        flux | sd3) cells+=("$cell") ;;
        *) for m in ${mode:-${COMPILE:-none regional}}; do cells+=("$arch:$px:$bs:${gc:-}:$m"); done ;;
    esac
done
for cell in "${cells[@]}"; do
    IFS=: read -r arch px bs gc mode <<<"$cell"
    name="$arch ${px}px batch $bs${gc:+ gradient checkpointing}${mode:+ compile $mode}"
    extra=()
    [ "${gc:-}" = gc ] && extra+=(--gradient-checkpointing)
    limit=${RUN_LIMIT_S:-240}
    run_steps=$steps
    case $arch in
        flux | sd3)
            limit=${FLOW_LIMIT_S:-150}
            run_steps=${FLOW_STEPS:-10}
            extra+=(--warmup-steps "${FLOW_WARMUP:-2}")
            [ -n "${TINY:-}" ] && extra+=(--tiny)
            now=$(date +%s)
            flow_started=${flow_started:-$now}
            if [ $((now - flow_started + limit)) -gt "${FLOW_BUDGET_S:-570}" ]; then
                echo "=== $name skipped: it might end past FLOW_BUDGET_S=${FLOW_BUDGET_S:-570} s" | tee -a "$log"
                continue
            fi
            extra+=(--arch "$arch")
            ;;
        tiny) extra+=(--base builtin:tiny --compile "${mode:-none}") ;;
        *) extra+=(--arch "$arch" --compile "${mode:-none}") ;;
    esac
    case $arch in
        flux | sd3) ;;
        *)  # the reference loop stays eager: a compiled row runs brandtune alone unless VARIANTS says otherwise
            if [ -n "${VARIANTS:-}" ]; then
                extra+=(--variants "$VARIANTS")
            elif [ "${mode:-none}" != none ]; then
                extra+=(--variants brandtune)
            elif [ "$arch" = tiny ]; then  # the step's speed (`brandtune train` timed from outside: the CPU headline)
                extra+=(--variants reference,brandtune)
            fi
            ;;
    esac
    if [ -n "${DEADLINE:-}" ]; then  # a row that cannot finish before the caller's deadline is not started
        left=$((DEADLINE - $(date +%s)))
        if [ "$left" -lt 20 ]; then
            echo "=== $name skipped: the time budget is spent (DEADLINE)" | tee -a "$log"
            continue
        fi
        [ "$left" -lt "$limit" ] && limit=$left
    fi
    echo "=== $name: $(date -u +%H:%M:%S)" | tee -a "$log"
    rm -f "$home/result.json"
    timeout "$limit" "$py" bench/train.py --device "${DEVICE:-cuda}" \
        --mixed-precision "${MIXED_PRECISION:-bf16}" --resolution "$px" --batch-size "$bs" --rank 16 \
        --steps "$run_steps" --threads "${THREADS:-8}" --home "$home" --json "$home/result.json" ${extra[@]+"${extra[@]}"} >>"$log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
        cat "$home/result.json" >>"$out/train_gpu.jsonl" && echo >>"$out/train_gpu.jsonl"
    else
        [ $rc -eq 124 ] && why="timed out after ${limit} s" || why="exit $rc"
        echo "=== $name failed: $why" | tee -a "$log"
        failed=1
    fi
done
exit $failed
