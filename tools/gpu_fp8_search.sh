#!/usr/bin/env bash
# Searched float8 plans on one GPU, in two steps (the search itself runs anywhere, on the profile):
#   OUT=dir bash tools/gpu_fp8_search.sh profile 3b|7b
#       compiled layers in bf16 and float8 tensorwise, micro-batches 2 and 4 -> $OUT/prof_<model>/
#   OUT=dir bash tools/gpu_fp8_search.sh bench 3b|7b PROFILE_DIR PLAN.json... [-- GLOBAL_PLAN...]
#       the plans (each priced on PROFILE_DIR) beside plain PyTorch and FSDP2, compiled, with and
#       without torchao float8 -> $OUT/bench_<model>.json and .log
# 3b: a LLaMA-3.2-3B shape at seq 4096; 7b: LLaMA-7B at seq 2048 (as tools/gpu_fp8.sh).
set -uo pipefail
# The tools import the package from this checkout when it is not installed (as on a machine given a copy).
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
cd "$(dirname "$0")/.."
OUT=${OUT:-fp8_out}; mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
step=${1:?profile or bench}; what=${2:?3b or 7b}; shift 2
if [[ $what == 3b ]]; then
  M="--model-family llama --num-layers 28 --hidden-size 3072 --num-attention-heads 24 --num-query-groups 8
     --ffn-hidden-size 8192 --seq-length 4096 --vocab-size 128256 --attention-backend cudnn"
  GBS=16
else
  M="--model-family llama --num-layers 32 --hidden-size 4096 --num-attention-heads 32 --num-query-groups 32
     --ffn-hidden-size 11008 --seq-length 2048 --vocab-size 32000 --attention-backend cudnn"
  GBS=32
fi
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv
  python3 -c 'import torch, torchao; print("torch", torch.__version__, "torchao", torchao.__version__)' 2>&1 | tail -1
  echo "git $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"; date -u; } > "$OUT/gpus_${step}_$what.txt"
if [[ $step == profile ]]; then
  P="$OUT/prof_$what"; mkdir -p "$P"
  # shellcheck disable=SC2086
  timeout "${PROFILE_TIMEOUT:-300}" python3 tools/profile_model.py --out-dir "$P" $M --compile --fp8 tensorwise \
    --micro-batch-sizes 2 4 --tp 1 --sustained-seconds "${SUSTAINED:-15}" --quiet "$@" > "$P/profile_model.log" 2>&1
  tail -12 "$P/profile_model.log"
else
  prof=${1:?profile dir}; shift
  plans=(); while [[ $# -gt 0 && $1 != -- ]]; do plans+=("$1"); shift; done
  [[ ${1:-} == -- ]] && shift
  # shellcheck disable=SC2086
  torchrun --standalone --nproc-per-node 1 tools/benchmark.py $M --bf16 --profile-dir "$prof" \
    --plans "${plans[@]}" --global-plans "$@" --plan-variants compile \
    --baselines "${BASELINES-plain+compile+fp8,fsdp2+compile+fp8,plain+compile,fsdp2+compile}" \
    --baseline-micro-batches "${BASELINE_MBS:-4,2}" --baseline-global-batch "$GBS" \
    --iters "${ITERS:-4}" --warmup 2 --out "$OUT/bench_$what.json" 2>&1 | grep --line-buffered -v -i warn \
    | tee "$OUT/bench_$what.log"
fi
