#!/usr/bin/env bash
# Profile this machine for the search: collectives over all visible GPUs, then one model on one GPU.
#
#   tools/device_profile.sh OUT_DIR [profile_model.py flags: model flags, --micro-batch-sizes, --tp ...]
#
#   tools/device_profile.sh profiles/h100 --model-family llama --num-layers 32 --hidden-size 4096 \
#       --num-attention-heads 32 --ffn-hidden-size 11008 --seq-length 4096 --vocab-size 32000
#
# Writes OUT_DIR/hardware.json, OUT_DIR/model.json, a log of each tool and the GPU inventory.
# Environment: PYTHON (default python3), NPROC (default: every visible GPU), COMM_ARGS (extra
# profile_comm.py flags, e.g. "--max-size 256M").
set -euo pipefail
# The tools import the package from this checkout when it is not installed (as on a machine given a copy).
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"

if [[ $# -lt 1 || "$1" == -* ]]; then
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
mkdir -p "$1"
out=$(cd "$1" && pwd)
shift
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

ngpu=$("$py" -c 'import torch; print(torch.cuda.device_count())')
nproc=${NPROC:-$ngpu}
{
    date -u +"date: %Y-%m-%dT%H:%M:%SZ"
    echo "host: $(hostname)"
    echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())'
    nvidia-smi 2>/dev/null || echo "nvidia-smi: not available"
} >"$out/machine.txt" 2>&1

status=0
if [[ "$nproc" -ge 2 ]]; then
    echo "== profile_comm over $nproc GPUs"
    # shellcheck disable=SC2086
    "$py" -m torch.distributed.run --standalone --nproc-per-node "$nproc" tools/profile_comm.py \
        --out-dir "$out" ${COMM_ARGS:-} 2>&1 | tee "$out/profile_comm.log" || status=$?
else
    echo "== profile_comm skipped: $nproc GPU visible, collectives need at least 2" | tee "$out/profile_comm.log"
fi

echo "== profile_model on one GPU"
"$py" tools/profile_model.py --out-dir "$out" "$@" 2>&1 | tee "$out/profile_model.log" || status=$?

ls -l "$out"
exit "$status"
