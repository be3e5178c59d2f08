#!/usr/bin/env bash
# GPT-2 small (124M) on one node, GLOBAL mode (every layer the same); pass --galvatron-config
# plan.json for a searched plan. Runs from any directory (relative paths are the caller's);
# flags after the script's name override its own (the last one given wins).
#   GPUS    ranks on this node (default 8)
#   DATA    e.g. "1.0 /data/owt_text_document"; empty = mock data
#   SAVE    checkpoint directory (default checkpoints/gpt2_small)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
GPUS=${GPUS:-8}
DATA=${DATA:-}
if [[ -n $DATA ]]; then
  # shellcheck disable=SC2206
  DATA_ARGS=(--data-path $DATA --split 949,50,1 --eval-interval 1000 --eval-iters 20)
else
  DATA_ARGS=(--mock-data)
fi
torchrun --nproc-per-node "$GPUS" "$ROOT/pretrain_gpt.py" \
  --model-family gpt2 --num-layers 12 --hidden-size 768 --num-attention-heads 12 \
  --seq-length 1024 --max-position-embeddings 1024 --vocab-size 50257 \
  --global-batch-size 512 --micro-batch-size 16 \
  --default-dp-type zero2 --global-tp-deg 1 \
  --lr 6e-4 --min-lr 6e-5 --lr-warmup-iters 2000 --lr-decay-style cosine --train-iters 600000 \
  --weight-decay 0.1 --clip-grad 1.0 --bf16 --log-interval 10 \
  "${DATA_ARGS[@]}" \
  --save "${SAVE:-checkpoints/gpt2_small}" --save-interval 2000 "$@"
