#!/usr/bin/env bash
# One training job over several machines with torchrun: run this same command on every node
# (in any order; c10d rendezvous on the first node numbers the ranks, each node's consecutively).
#
#   MASTER_ADDR=node0 NNODES=2 examples/multinode_torchrun.sh                  # on node0 and node1
#   MASTER_ADDR=node0 NNODES=2 examples/multinode_torchrun.sh --galvatron-config plan.json <model flags>
#
# Default: GPT-2 medium in GLOBAL mode, tensor parallel = GPUS (inside each node: a TP group is
# consecutive ranks), data parallel across the nodes. Runs from any directory; flags after the
# script's name override its own (the last one wins). Environment:
#   NNODES       machines in the job (default 2)
#   GPUS         ranks per machine (default 8)
#   MASTER_ADDR  host name or address of the node that hosts the rendezvous (required)
#   MASTER_PORT  its port (default 29500)
#   RUN_ID       the job's rendezvous id, the same on every node (default mg-$MASTER_PORT)
#   TP           tensor-parallel degree (default GPUS)
#   PRECISION    --bf16 (default) or empty for float32
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
NNODES=${NNODES:-2}
GPUS=${GPUS:-8}
MASTER_PORT=${MASTER_PORT:-29500}
: "${MASTER_ADDR:?set MASTER_ADDR to the host name or address of the first node}"
PRECISION=${PRECISION---bf16}
# shellcheck disable=SC2086
python -m torch.distributed.run --nnodes "$NNODES" --nproc-per-node "$GPUS" \
  --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "${RUN_ID:-mg-$MASTER_PORT}" \
  --max-restarts 0 "$ROOT/pretrain_gpt.py" \
  --model-family gpt2 --num-layers 24 --hidden-size 1024 --num-attention-heads 16 \
  --seq-length 1024 --vocab-size 50257 --global-batch-size 512 --micro-batch-size 8 \
  --global-tp-deg "${TP:-$GPUS}" --global-tp-consec 1 --default-dp-type zero2 \
  --lr 3e-4 --min-lr 3e-5 --lr-warmup-iters 2000 --train-iters 400000 --weight-decay 0.1 --clip-grad 1.0 \
  $PRECISION --log-interval 10 --mock-data "$@"
