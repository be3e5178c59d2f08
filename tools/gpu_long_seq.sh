#!/usr/bin/env bash
# Long sequences on one GPU from a profile that never saw them, in one run:
#   OUT=dir bash tools/gpu_long_seq.sh [SEQ...]          (default SEQ: 16384 32768)
# 1. profiles a LLaMA-7B shape at seq 4096 and 8192 only (micro-batches 1 and 2: the fits in
#    sequence length have three terms), tp 1, eager, cuDNN attention -> $OUT/prof/
# 2. searches a plan for each SEQ on that profile (search/run.py takes the layer's time and
#    activation memory from the fits and says so on one line) -> $OUT/plan_<SEQ>.json
# 3. runs each plan with tools/benchmark.py, which prices it on the same profile at its length:
#    predicted vs measured iteration time and peak memory -> $OUT/bench_<SEQ>.json and .log
# hardware.json: one GPU runs no collective; the 2x H200 collective profile every 1-GPU profile
# here reuses is copied in (HARDWARE=path to override).
set -uo pipefail
# The tools import the package from this checkout when it is not installed (as on a machine given a copy).
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
cd "$(dirname "$0")/.."
OUT=${OUT:-long_seq_out}; mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
SEQS=("$@"); [[ ${#SEQS[@]} -eq 0 ]] && SEQS=(16384 32768)
MEM=${MEMORY_GB:-136}  # as results/h200x1_llama7b/search
# every flag but --seq-length, which each step sets
M="--model-family llama --num-layers 32 --hidden-size 4096 --num-attention-heads 32 --num-query-groups 32
   --ffn-hidden-size 11008 --vocab-size 32000 --attention-backend cudnn"
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv
  python3 -c 'import torch; print("torch", torch.__version__)' 2>&1 | tail -1
  echo "git $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"; date -u; } > "$OUT/gpus.txt"

P="$OUT/prof"; mkdir -p "$P"
cp "${HARDWARE:-results/h200x2_gpt1p4b/validation_sustained_profile/profile/hardware.json}" "$P/hardware.json"
# shellcheck disable=SC2086
timeout "${PROFILE_TIMEOUT:-900}" python3 tools/profile_model.py --out-dir "$P" $M --seq-length 4096 \
  --seq-lengths 4096 8192 --micro-batch-sizes 1 2 --tp 1 --sustained-seconds "${SUSTAINED:-20}" --quiet \
  > "$P/profile_model.log" 2>&1 || { tail -5 "$P/profile_model.log"; exit 1; }
tail -14 "$P/profile_model.log"

for seq in "${SEQS[@]}"; do
  # shellcheck disable=SC2086
  python3 search/run.py --memory-gb "$MEM" --num-gpus 1 $M --seq-length "$seq" --max-position-embeddings "$seq" \
    --profile-dir "$P" --global-batch-size-range "${GBS_MIN:-1}" "${GBS_MAX:-8}" --output "$OUT/plan_$seq.json" \
    --quiet 2>&1 | tee "$OUT/search_$seq.log"
  [[ -f $OUT/plan_$seq.json ]] || continue
  # shellcheck disable=SC2086
  torchrun --standalone --nproc-per-node 1 tools/benchmark.py $M --seq-length "$seq" \
    --max-position-embeddings "$seq" --bf16 --profile-dir "$P" --plans "$OUT/plan_$seq.json" --baselines "" \
    --iters "${ITERS:-4}" --warmup 2 --out "$OUT/bench_$seq.json" 2>&1 | grep --line-buffered -v -i warn \
    | tee "$OUT/bench_$seq.log"
done
# predicted vs measured, one line per length (peak: the allocator's allocated bytes, as predicted)
for seq in "${SEQS[@]}"; do
  [[ -f $OUT/bench_$seq.json ]] || continue
  python3 - "$OUT/bench_$seq.json" "$seq" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    t, tp, m, mp = r["iter_time_s"], r["predicted_iter_time_s"], r["peak_mem_gb"], r["predicted_peak_mem_gb"]
    err = lambda a, b: f"{(b - a) / a:+.1%}" if a and b else "n/a"
    print(f"seq {sys.argv[2]} {r['name']} ({r['status']}): iter {t:.3f} s measured, {tp} predicted ({err(t, tp)}); "
          f"peak {m:.2f} GB measured, {mp} predicted ({err(m, mp)})")
PY
done
