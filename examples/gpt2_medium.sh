#!/usr/bin/env bash
# GPT-2 medium (350M): tensor parallel 2 with sequence parallelism, ZeRO-3 across the rest.
# Runs from any directory; flags after the script's name override its own (the last one wins).
#   GPUS    ranks on this node (default 8; even, for tensor parallel 2)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
GPUS=${GPUS:-8}
torchrun --nproc-per-node "$GPUS" "$ROOT/pretrain_gpt.py" \
  --model-family gpt2 --num-layers 24 --hidden-size 1024 --num-attention-heads 16 \
  --seq-length 1024 --max-position-embeddings 1024 --vocab-size 50257 \
  --global-batch-size 512 --micro-batch-size 8 \
  --global-tp-deg 2 --sequence-parallel --sdp 1 \
  --lr 3e-4 --min-lr 3e-5 --lr-warmup-iters 2000 --train-iters 400000 \
  --weight-decay 0.1 --clip-grad 1.0 --bf16 --log-interval 10 --mock-data "$@"
