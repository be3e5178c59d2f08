#!/usr/bin/env bash
# One call on a GPU machine: profile it, search a plan, then benchmark the searched plan, a set
# of hand-picked plans (each priced by the cost model) and the PyTorch baselines side by side.
#   OUT=dir bash tools/gpu_validate.sh
# MODEL, MEMORY_GB, BATCH, PLANS, BASELINES, BASELINE_MBS, BASELINE_GBS (baselines accumulate to
# this global batch), ITERS, WARMUP, ROUNDS, VARIANTS, PROFILE_ARGS may be overridden from the
# environment; HARDWARE=path/hardware.json reuses that collective profile (same machine kind)
# and profiles only the model. COMPILE=1 also profiles compiled layers (COMPILE_PROFILE_ARGS,
# default tp 1 at micro-batches 4 8): the search then weighs eager against compiled layers and
# the benchmark prices compiled plans on that profile; COMPILE_PROFILE=dir instead prices them on
# a compiled profile taken before. EXTRA_PLANS (plan files) run beside the searched plan;
# BENCH_ARGS go to the benchmark only (e.g. --attention-backend cudnn, with PROFILE_ARGS alike).
# SUSTAINED_DUTY (default "0.85 0.7"; empty to skip) repeats the profiler's sustained run at those
# duty cycles, so that TP and pipeline plans, which idle the GPU part of the step, are priced at
# the clock this machine holds when partly idle (docs/log.md).
# OUT receives bench.json, bench.log,
# plan.json, plan.png and validate.tar.gz (everything, profiles and logs included).
set -uo pipefail
# The tools import the package from this checkout when it is not installed (as on a machine given a copy).
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-validate_out}; mkdir -p "$OUT"
WORK=$(mktemp -d); mkdir -p "$WORK/prof"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
NGPU=${NGPU:-$(python3 -c "import torch; print(max(1, torch.cuda.device_count()))")}
export NPROC=$NGPU
MODEL=${MODEL:-"--model-family gpt2 --num-layers 24 --hidden-size 2048 --num-attention-heads 16 --seq-length 2048 --vocab-size 50304"}
MEMORY_GB=${MEMORY_GB:-120}
BATCH=${BATCH:-"--global-batch-size-range 16 64"}
PLANS=${PLANS:-"tp=1,dp=ddp,gbs=32,chunks=1 tp=1,dp=zero2,gbs=32,chunks=2 tp=1,dp=zero3,gbs=32,chunks=1 tp=1,dp=zero3,ckpt=1,gbs=64,chunks=1 tp=2,dp=ddp,sp=1,gbs=16,chunks=1 pp=2,dp=ddp,gbs=32,chunks=4 pp=2,dp=ddp,gbs=32,chunks=8,sched=gpipe tp=1,dp=zero2,gbs=48,chunks=1"}
BASELINES=${BASELINES:-ddp,fsdp2,fsdp2+ourmodel}
BASELINE_MBS=${BASELINE_MBS:-"8,16,24"}
DUTY=${SUSTAINED_DUTY-"0.85 0.7"}
DUTY_ARGS=${DUTY:+--sustained-duty $DUTY}
nvidia-smi --query-gpu=name,memory.total,power.limit,clocks.max.sm --format=csv > "$WORK/gpus.txt" 2>&1
if [[ -n "${HARDWARE:-}" ]]; then
    cp "$HARDWARE" "$WORK/prof/hardware.json"
    timeout ${PROFILE_TIMEOUT:-900} python3 tools/profile_model.py --out-dir "$WORK/prof" $MODEL \
        --micro-batch-sizes 1 2 4 8 --tp 1 2 $DUTY_ARGS ${PROFILE_ARGS:-} > "$WORK/profile.log" 2>&1
else
    timeout ${PROFILE_TIMEOUT:-900} bash tools/device_profile.sh "$WORK/prof" $MODEL --micro-batch-sizes 1 2 4 8 --tp 1 2 \
        $DUTY_ARGS ${PROFILE_ARGS:-} > "$WORK/profile.log" 2>&1
fi
tail -3 "$WORK/profile.log"; grep -h "time\|took\|s$" "$WORK/prof/"*.log 2>/dev/null | tail -4
COMPILED=""
if [[ "${COMPILE:-0}" == 1 ]]; then
    mkdir -p "$WORK/prof_compiled"; cp "$WORK/prof/hardware.json" "$WORK/prof_compiled/"
    CARGS=${COMPILE_PROFILE_ARGS:-"--micro-batch-sizes 4 8 --tp 1"}
    # shellcheck disable=SC2086
    timeout ${PROFILE_TIMEOUT:-900} python3 tools/profile_model.py --out-dir "$WORK/prof_compiled" $MODEL --compile \
        $CARGS $DUTY_ARGS > "$WORK/profile_compiled.log" 2>&1
    tail -3 "$WORK/profile_compiled.log"
    COMPILED="--compile-profile-dir $WORK/prof_compiled"
elif [[ -n "${COMPILE_PROFILE:-}" ]]; then
    COMPILED="--compile-profile-dir $COMPILE_PROFILE"
fi
# shellcheck disable=SC2086
python3 search/run.py --memory-gb "$MEMORY_GB" --num-gpus "$NGPU" $MODEL --profile-dir "$WORK/prof" $COMPILED \
    $BATCH --output "$WORK/plan.json" --plot "$WORK/plan.png" 2>&1 | grep -v -i warn | tee "$WORK/search.log" | tail -12
# shellcheck disable=SC2086
timeout ${BENCH_TIMEOUT:-3600} torchrun --standalone --nproc-per-node "$NGPU" tools/benchmark.py $MODEL --bf16 \
    --profile-dir "$WORK/prof" $COMPILED \
    --plans "$WORK/plan.json" ${EXTRA_PLANS:-} --global-plans $PLANS --baselines "$BASELINES" --baseline-micro-batches "$BASELINE_MBS" \
    --baseline-global-batch ${BASELINE_GBS:-0} \
    --plan-variants "${VARIANTS:-plan}" --rounds ${ROUNDS:-1} --iters ${ITERS:-5} --warmup ${WARMUP:-2} \
    ${BENCH_ARGS:-} --out "$WORK/bench.json" 2>&1 | grep --line-buffered -v -i warn | tee "$WORK/bench.log"
cp "$WORK/bench.json" "$WORK/bench.log" "$WORK/plan.json" "$WORK/plan.png" "$OUT/" 2>/dev/null
tar -czf "$OUT/validate.tar.gz" -C "$WORK" .
