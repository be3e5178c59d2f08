#!/usr/bin/env bash
# A GPT-2-small-sized model trained on the Python standard library's sources under bf16 and under
# float8 (tensorwise) with the same seed and data; their loss curves compared.
#   python tools/stdlib_corpus.py --out-dir corpus && python tools/preprocess_data.py --input corpus/stdlib.jsonl \
#     --output-prefix corpus/stdlib --tokenizer-type SentencePieceTokenizer --tokenizer-model corpus/stdlib_spm.model --append-eod
#   OUT=dir DATA=corpus/stdlib_text_document bash tools/fp8_convergence.sh [ITERS]
set -uo pipefail
# The tools import the package from this checkout when it is not installed (as on a machine given a copy).
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
cd "$(dirname "$0")/.."
OUT=${OUT:-convergence_out}; mkdir -p "$OUT"
DATA=${DATA:?the corpus prefix (see the lines above)}
ITERS=${1:-1500}
export PYTHONUNBUFFERED=1
M="--model-family gpt2 --num-layers 12 --hidden-size 768 --num-attention-heads 12 --seq-length 512
   --max-position-embeddings 512 --vocab-size 8192 --data-path $DATA --global-batch-size 16 --micro-batch-size 16
   --train-iters $ITERS --lr 6e-4 --min-lr 6e-5 --lr-warmup-iters 100 --lr-decay-style cosine --weight-decay 0.1
   --bf16 --seed 1234 --log-interval 100"
for run in bf16 fp8; do
  extra=""; [[ $run == fp8 ]] && extra="--fp8 tensorwise"
  # shellcheck disable=SC2086
  python3 pretrain_gpt.py $M $extra --metrics-json "$OUT/$run.jsonl" 2>&1 | grep -v -i warn | tee "$OUT/$run.log"
done
python3 tools/plot_convergence.py "$OUT/bf16.jsonl" "$OUT/fp8.jsonl" --labels bf16 "fp8 tensorwise" --last 500 \
  --out "$OUT/convergence.png" | tee "$OUT/summary.txt"
