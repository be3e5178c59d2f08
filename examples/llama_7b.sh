#!/usr/bin/env bash
# A LLaMA-7B shape on 8 GPUs: search a plan for the memory budget, then train with it.
#   1. bash tools/device_profile.sh profiles/ <model flags>   (once per machine and model)
#   2. this script
GPUS=${GPUS:-8}
MODEL="--model-family llama --num-layers 32 --hidden-size 4096 --num-attention-heads 32 --num-query-groups 32 \
  --ffn-hidden-size 11008 --seq-length 4096 --max-position-embeddings 4096 --vocab-size 32000"
python search/run.py --memory-gb 60 --num-gpus "$GPUS" --profile-dir "${PROFILES:-profiles}" $MODEL \
  --output plan_llama7b.json
torchrun --nproc-per-node "$GPUS" pretrain_gpt.py --galvatron-config plan_llama7b.json $MODEL \
  --lr 3e-4 --min-lr 3e-5 --lr-warmup-iters 2000 --train-iters 250000 --weight-decay 0.1 \
  --clip-grad 1.0 --bf16 --log-interval 1 --mock-data "$@"
