#!/usr/bin/env bash
# Float8 on one GPU, in one benchmark run per model: our plans in bf16 and with float8 layers
# against the strongest plain-PyTorch baselines, with and without torchao float8.
#   OUT=dir bash tools/gpu_fp8.sh 3b|7b [extra benchmark.py args...]
# 3b: a LLaMA-3.2-3B shape at seq 4096; 7b: LLaMA-7B at seq 2048 with the plan searched for it
# (results/h200x1_llama7b/search/plan.json), as it is and with every layer in float8.
set -uo pipefail
# The tools import the package from this checkout when it is not installed (as on a machine given a copy).
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
cd "$(dirname "$0")/.."
OUT=${OUT:-fp8_out}; mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
what=${1:?3b or 7b}; shift
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv
  python3 -c 'import torch, torchao; print("torch", torch.__version__, "torchao", torchao.__version__)' 2>&1 | tail -1
  echo "git $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"; date -u; } > "$OUT/gpus_$what.txt"
run() { torchrun --standalone --nproc-per-node 1 tools/benchmark.py "$@" 2>&1 | grep -v -i warn; }
if [[ $what == 3b ]]; then
  M="--model-family llama --num-layers 28 --hidden-size 3072 --num-attention-heads 24 --num-query-groups 8
     --ffn-hidden-size 8192 --seq-length 4096 --vocab-size 128256 --bf16 --attention-backend cudnn"
  # shellcheck disable=SC2086
  run $M --global-plans "tp=1,dp=ddp,gbs=16,chunks=4" "tp=1,dp=ddp,gbs=16,chunks=4,fp8=tensorwise" \
    --plan-variants compile --baselines plain+compile+fp8,fsdp2+compile+fp8,plain+compile,fsdp2+compile \
    --baseline-micro-batches 4,2 --baseline-global-batch 16 --iters 4 --warmup 2 --out "$OUT/bench_3b.json" "$@" \
    | tee "$OUT/bench_3b.log"
else
  M="--model-family llama --num-layers 32 --hidden-size 4096 --num-attention-heads 32 --num-query-groups 32
     --ffn-hidden-size 11008 --seq-length 2048 --vocab-size 32000 --bf16 --attention-backend cudnn"
  plan=results/h200x1_llama7b/search/plan.json
  python3 - "$plan" "$OUT/plan_fp8.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
p["layers"] = [dict(layer, fp8="tensorwise") for layer in p["layers"]]
p["predicted"] = {}
json.dump(p, open(sys.argv[2], "w"), indent=1)
PY
  cp "$plan" "$OUT/plan_bf16.json"
  # shellcheck disable=SC2086
  run $M --plans "$OUT/plan_bf16.json" "$OUT/plan_fp8.json" \
    --baselines fsdp2+compile+fp8,plain+compile+fp8,fsdp2+compile --baseline-micro-batches 2,1 \
    --baseline-global-batch 32 --iters 3 --warmup 2 --out "$OUT/bench_7b.json" "$@" | tee "$OUT/bench_7b.log"
fi
