#!/bin/bash
# One device call: environment, GPU test suite (kernels, conformance kit small + large, sweeps), then the benchmark.
#   bash packages/dlinfer-maca/tools/gpu_check.sh [tests|bench|all] [extra bench args...]
# Logs go to $OUT (or ./gpu-out). Run from the repository root on a machine with torch + triton + a CUDA device.
set -u
MODE=${1:-all}; shift || true
OUT=${OUT:-./gpu-out}; mkdir -p "$OUT"
SITE=/tmp/dlinfer-site; mkdir -p $SITE
# optional LMDeploy peer: .carry/lmdeploy-0.18.0-nots.tgz (LMDeploy 0.18.0 without TurboMind's binaries) and
# .carry/whl/ (cp312 wheels of its import-time dependencies), as in tools/gpu_env.sh
if [ -d .carry/whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .carry/whl/*.whl \
    && tar xzf .carry/lmdeploy-0.18.0-nots.tgz -C $SITE
fi
python3 packages/dlinfer-maca/tools/devenv.py $SITE packages/dlinfer-core packages/dlinfer-maca || exit 1
export PYTHONPATH=$SITE:$PWD/packages/dlinfer-core/src:$PWD/packages/dlinfer-maca/src  # absolute: tests run subprocesses elsewhere
export PYTHONUNBUFFERED=1
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())" | tee "$OUT/env.txt"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv >> "$OUT/env.txt" 2>&1
if [ "$MODE" = tests ] || [ "$MODE" = all ]; then
  python3 -m pytest -q -p no:cacheprovider -n 8 --timeout=600 packages/dlinfer-maca/tests \
    -o addopts="" -rfE ${TESTS_K:+-k "$TESTS_K"} 2>&1 | tee "$OUT/tests.log" | grep -E "passed|failed|FAILED|ERROR|error" | tail -60
fi
if [ "$MODE" = bench ] || [ "$MODE" = all ]; then
  python3 -m dlinfer_maca.bench --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log" | tail -80
fi
