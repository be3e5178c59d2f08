#!/usr/bin/env bash
# Install (CPU torch, the package with its compiled search core, the test extras: torchao for the
# fp8 baselines among them) and run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0 pybind11 numpy
python -m pip install -q --no-build-isolation -e ".[test]"
python -m pytest -q --durations=25 tests   # the slowest tests listed, to keep the suite within CI's time
