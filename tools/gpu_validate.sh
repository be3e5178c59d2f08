#!/usr/bin/env bash
# One call on a GPU machine: profile it, search a plan, then benchmark the searched plan, a set
# of hand-picked plans (each priced by the cost model) and the PyTorch baselines side by side.
#   OUT=dir bash tools/gpu_validate.sh
# MODEL, MEMORY_GB, BATCH, PLANS, BASELINE_MBS may be overridden from the environment.
set -uo pipefail
OUT=${OUT:-validate_out}; mkdir -p "$OUT/prof"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
NGPU=${NGPU:-$(python3 -c "import torch; print(max(1, torch.cuda.device_count()))")}
export NPROC=$NGPU
MODEL=${MODEL:-"--model-family gpt2 --num-layers 24 --hidden-size 2048 --num-attention-heads 16 --seq-length 2048 --vocab-size 50304"}
MEMORY_GB=${MEMORY_GB:-120}
BATCH=${BATCH:-"--global-batch-size-range 16 64"}
PLANS=${PLANS:-"tp=1,dp=ddp,gbs=32,chunks=1 tp=1,dp=zero2,gbs=32,chunks=2 tp=1,dp=zero3,gbs=32,chunks=1 tp=1,dp=zero3,ckpt=1,gbs=64,chunks=1 tp=2,dp=ddp,sp=1,gbs=16,chunks=1 pp=2,dp=ddp,gbs=32,chunks=4 pp=2,dp=ddp,gbs=32,chunks=8,sched=gpipe tp=1,dp=zero2,gbs=48,chunks=1"}
BASELINE_MBS=${BASELINE_MBS:-"8,16,24"}
bash tools/device_profile.sh "$OUT/prof" $MODEL --micro-batch-sizes 1 2 4 8 --tp 1 2 ${PROFILE_ARGS:-} \
    > "$OUT/profile.log" 2>&1
tail -3 "$OUT/profile.log"
python3 search/run.py --memory-gb "$MEMORY_GB" --num-gpus "$NGPU" $MODEL --profile-dir "$OUT/prof" $BATCH \
    --output "$OUT/plan.json" --plot "$OUT/plan.png" 2>&1 | grep -v -i warn | tee "$OUT/search.log" | tail -12
# shellcheck disable=SC2086
torchrun --standalone --nproc-per-node "$NGPU" tools/benchmark.py $MODEL --bf16 --profile-dir "$OUT/prof" \
    --plans "$OUT/plan.json" --global-plans $PLANS --baselines ddp,fsdp2 --baseline-micro-batches "$BASELINE_MBS" \
    --iters ${ITERS:-5} --warmup ${WARMUP:-2} --out "$OUT/bench.json" 2>&1 | grep -v -i warn | tee "$OUT/bench.log" | tail -14
