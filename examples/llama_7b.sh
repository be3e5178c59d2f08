#!/usr/bin/env bash
# A LLaMA-7B shape on one node: search a plan for the memory budget, then train with it.
#   1. tools/device_profile.sh profiles/ <the model flags below>   (once per machine and model;
#      on one GPU only model.json is written, and the search needs nothing more)
#   2. this script
# Runs from any directory (relative paths are the caller's); flags after the script's name go to
# pretrain_gpt.py and override its own. Environment:
#   GPUS       ranks on this node (default 8)
#   PROFILES   directory with model.json (and hardware.json for 2+ GPUs), default profiles
#   MEMORY_GB  memory per GPU the plan may use (default 60)
#   PLAN       plan JSON the search writes and training reads (default plan_llama7b.json)
#   MODEL      the model flags, shared by search and training (default: the 7B shape)
#   SEARCH_ARGS  more search/run.py flags (e.g. "--global-batch-size 64")
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
GPUS=${GPUS:-8}
PROFILES=${PROFILES:-profiles}
PLAN=${PLAN:-plan_llama7b.json}
MODEL=${MODEL:-"--model-family llama --num-layers 32 --hidden-size 4096 --num-attention-heads 32 --num-query-groups 32 \
  --ffn-hidden-size 11008 --seq-length 4096 --max-position-embeddings 4096 --vocab-size 32000"}
if [[ ! -f $PROFILES/model.json ]]; then
  echo "llama_7b.sh: no $PROFILES/model.json: profile first (tools/device_profile.sh $PROFILES <model flags>) or set PROFILES" >&2
  exit 2
fi
# shellcheck disable=SC2086
python "$ROOT/search/run.py" --memory-gb "${MEMORY_GB:-60}" --num-gpus "$GPUS" --profile-dir "$PROFILES" $MODEL \
  --output "$PLAN" ${SEARCH_ARGS:-}
# shellcheck disable=SC2086
torchrun --nproc-per-node "$GPUS" "$ROOT/pretrain_gpt.py" --galvatron-config "$PLAN" $MODEL \
  --lr 3e-4 --min-lr 3e-5 --lr-warmup-iters 2000 --train-iters 250000 --weight-decay 0.1 \
  --clip-grad 1.0 --bf16 --log-interval 1 --mock-data "$@"
