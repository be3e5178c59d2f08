#!/usr/bin/env bash
# The whole workflow on a CPU machine (gloo, 2 ranks, a tiny GPT, mock data):
# install -> profile hardware and model -> search a plan -> train with it.
# Runs from any directory. Environment: OUT (default runs/quickstart, under the repository),
# SKIP_INSTALL=1 (use the installed packages), TRAIN_ITERS (default 30).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ -z ${SKIP_INSTALL:-} ]]; then
  python -m pip install -q torch==2.13.0 pybind11 numpy
  python -m pip install -q --no-build-isolation -e ".[plot]"
fi
MODEL="--model-family gpt2 --num-layers 4 --hidden-size 64 --num-attention-heads 4 --seq-length 64 --vocab-size 512"
OUT=${OUT:-runs/quickstart}
mkdir -p "$OUT"
torchrun --standalone --nproc-per-node 2 tools/profile_comm.py --quick --quiet --out-dir "$OUT"
# shellcheck disable=SC2086
python tools/profile_model.py $MODEL --dtype bf16 --micro-batch-sizes 1 2 4 --tp 1 2 --iters 3 --quiet --out-dir "$OUT"
# shellcheck disable=SC2086
python search/run.py --memory-gb 4 --num-gpus 2 $MODEL --profile-dir "$OUT" --global-batch-size 8 \
    --output "$OUT/plan.json" --plot "$OUT/plan.png"
# shellcheck disable=SC2086
torchrun --standalone --nproc-per-node 2 pretrain_gpt.py --galvatron-config "$OUT/plan.json" $MODEL \
    --mock-data --train-iters "${TRAIN_ITERS:-30}" --lr 3e-3 --lr-warmup-iters 3 --log-interval 5
