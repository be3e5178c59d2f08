#!/usr/bin/env bash
# Saving and restarting on one GPU:
#   OUT=dir bash tools/gpu_reliability.sh [LAYERS]
# 1. torchrun --max-restarts 1 over NCCL: the rank kills itself (SIGKILL) at iteration 7 and the
#    restarted run resumes from the checkpoint of iteration 5 -> $OUT/restart_nccl.log.
# 2. A LLaMA-7B-shape model, LAYERS of its 32 layers (default 8: a 21 GB checkpoint with AdamW's
#    state, more than one rank of the whole model saves under 8-way sharding; all 32 layers make
#    81 GB, more than a 64 GB disk holds): one synchronous save; ITERS iterations (default 400)
#    with --async-save every ITERS/2; a third run loads the last async checkpoint (every file
#    verified) and trains one more iteration -> $OUT/save_{sync,async,resume}.{log,jsonl}.
set -uo pipefail
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
cd "$(dirname "$0")/.."
OUT=${OUT:-reliability_out}; mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
LAYERS=${1:-8}
SAVE=${SAVE:-/tmp/mg_ckpt}
{ nvidia-smi --query-gpu=name,memory.total --format=csv; df -h "$(dirname "$SAVE")" /dev/shm; free -g
  python3 -c 'import torch; print("torch", torch.__version__)'; date -u; } > "$OUT/machine.txt" 2>&1
if [[ -z ${SKIP_RESTART:-} ]]; then  # SKIP_RESTART=1: the saves only
  R=/tmp/mg_restart; rm -rf "$R"
  DYING_RANK=0 DYING_AT=7 DYING_MARKER="$R.died" timeout 150 torchrun --standalone --nproc-per-node 1 --max-restarts 1 \
    tests/dying_rank.py --model-family llama --num-layers 2 --hidden-size 256 --num-attention-heads 4 --seq-length 128 \
    --vocab-size 1024 --mock-data --bf16 --global-batch-size 4 --train-iters 8 --log-interval 1 --save-interval 5 \
    --save "$R" --load "$R" > "$OUT/restart_nccl.log" 2>&1
  echo "restart: exit $? died=$(test -e "$R.died" && echo yes || echo no)"
  grep -E "backend|loaded checkpoint|iteration +[0-9]+/" "$OUT/restart_nccl.log" | head -14
fi
M="--model-family llama --num-layers $LAYERS --hidden-size 4096 --num-attention-heads 32 --ffn-hidden-size 11008
   --seq-length 2048 --vocab-size 32000 --attention-backend cudnn --bf16 --mock-data"
T="--global-batch-size 8 --micro-batch-size 1 --global-checkpoint 1 --log-interval 10 --lr 1e-4"
# The synchronous save blocks training for as long as it takes: one is enough to time it.
rm -rf "$SAVE"
# shellcheck disable=SC2086
timeout 240 torchrun --standalone --nproc-per-node 1 pretrain_gpt.py $M $T --train-iters 4 --save-interval 4 \
  --save "$SAVE" --log-interval 1 --metrics-json "$OUT/save_sync.jsonl" > "$OUT/save_sync.log" 2>&1
echo "sync: exit $?"; grep -E "saved|saving" "$OUT/save_sync.log" | tail -2; du -sh "$SAVE"/iter_* | tail -1
# The asynchronous one: saves ITERS/2 iterations apart, more than the disk needs to write one.
rm -rf "$SAVE"; ITERS=${ITERS:-400}
# shellcheck disable=SC2086
timeout 400 torchrun --standalone --nproc-per-node 1 pretrain_gpt.py $M $T --train-iters "$ITERS" \
  --save-interval $((ITERS / 2)) --save "$SAVE" --async-save --metrics-json "$OUT/save_async.jsonl" \
  > "$OUT/save_async.log" 2>&1
echo "async: exit $?"; grep -E "saved|saving" "$OUT/save_async.log" | tail -4
# shellcheck disable=SC2086
timeout 150 torchrun --standalone --nproc-per-node 1 pretrain_gpt.py $M $T --train-iters $((ITERS + 1)) --log-interval 1 \
  --load "$SAVE" --metrics-json "$OUT/save_resume.jsonl" > "$OUT/save_resume.log" 2>&1
echo "resume: exit $?"; grep -E "loaded|iteration +[0-9]+/" "$OUT/save_resume.log" | head -3
rm -rf "$SAVE"
