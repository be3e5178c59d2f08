#!/usr/bin/env bash
# One GPU measurement set: CUDA sanity (losses of 1 vs N GPUs), then the benchmark table of
# plans against plain PyTorch DDP / FSDP2 for the GPT-1.4B shape. Results go to $OUT (or ./bench_out).
#   bash tools/gpu_bench.sh [sanity|bench|all] [extra benchmark.py args...]
set -u
# The tools import the package from this checkout when it is not installed (as on a machine given a copy).
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-bench_out}; mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
NGPU=$(python3 -c 'import torch; print(torch.cuda.device_count())')
what=${1:-all}; shift || true
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpus.txt"
python3 -c 'import torch; print("torch", torch.__version__, "nccl", torch.cuda.nccl.version())' | tee -a "$OUT/gpus.txt"
TINY="--num-layers 4 --hidden-size 256 --num-attention-heads 8 --seq-length 128 --vocab-size 1000 --global-batch-size 8 --train-iters 5 --lr 1e-3 --mock-data"
if [[ $what == sanity || $what == all ]]; then
  python3 pretrain_gpt.py $TINY 2>&1 | grep iteration | tee "$OUT/sanity_1gpu.txt"
  if [[ $NGPU -ge 2 ]]; then
    torchrun --standalone --nproc-per-node 2 pretrain_gpt.py $TINY --global-tp-deg 2 --default-dp-type zero3 --sequence-parallel 2>&1 \
      | grep -E "iteration|rror" | tee "$OUT/sanity_2gpu_tp2.txt"
    torchrun --standalone --nproc-per-node 2 pretrain_gpt.py $TINY --pp-deg 2 --chunks 4 2>&1 \
      | grep -E "iteration|rror" | tee "$OUT/sanity_2gpu_pp2.txt"
  fi
fi
MODEL="--model-family gpt2 --num-layers 24 --hidden-size 2048 --num-attention-heads 16 --seq-length 2048 --max-position-embeddings 2048 --vocab-size 50304 --bf16"
if [[ $what == bench || $what == all ]]; then
  torchrun --standalone --nproc-per-node "$NGPU" tools/benchmark.py $MODEL --iters 8 --warmup 3 \
    --out "$OUT/bench_gpt1p4b_${NGPU}gpu.json" "$@" 2>&1 | grep -v -i warn | tee "$OUT/bench_gpt1p4b_${NGPU}gpu.txt"
fi
