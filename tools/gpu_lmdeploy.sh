#!/bin/bash
# One device call: LMDeploy end to end on an NVIDIA GPU with the maca plugin (the e2e scenarios vs HF in bf16,
# eager + graph), then the throughput benchmark against LMDeploy's own cuda backend. Needs
# .carry/ (git-ignored, built outside the repository): .carry/lmdeploy-0.18.0-nots.tgz (LMDeploy 0.18.0's cp312
# wheel unpacked without TurboMind's binaries) and .carry/whl/ (cp312 wheels of its import-time dependencies that
# the device image lacks), installed as in tools/gpu_env.sh.
#   bash tools/gpu_lmdeploy.sh                                   (logs under $OUT, or ./gpu-out)
#   PHASES=tests bash tools/gpu_lmdeploy.sh                       (tests only; PHASES=bench: benchmark only)
#   BENCH_ARGS="--modes eager --rounds 3 --streams 3" PHASES=bench bash tools/gpu_lmdeploy.sh
set -u
OUT=${OUT:-./gpu-out}; mkdir -p "$OUT"
PHASES=${PHASES:-tests bench}
SITE=/tmp/site
if [ ! -d $SITE/lmdeploy ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .carry/whl/*.whl \
    && tar xzf .carry/lmdeploy-0.18.0-nots.tgz -C $SITE || exit 1
fi
export PYTHONPATH=$SITE:packages/dlinfer-core/src:packages/dlinfer-maca/src:packages/dlinfer-lmdeploy/src
export DLINFER_PLUGINS=dlinfer_maca.plugin PYTHONUNBUFFERED=1
rc=0
if [[ " $PHASES " == *" tests "* ]]; then
  python3 -m dlinfer info | tee "$OUT/info.txt"
  timeout ${TEST_TIMEOUT:-400} python3 -m pytest -q -p no:cacheprovider packages/dlinfer-lmdeploy/tests -m gpu -rfE \
    --durations=0 ${TEST_ARGS:-} 2>&1 | tee "$OUT/gpu-tests.log" | tail -40
  rc=${PIPESTATUS[0]}
fi
if [[ " $PHASES " == *" bench "* ]]; then
  python3 -m dlinfer bench --backend reference --op rms_norm --device cpu 2>/dev/null | head -1 | tee "$OUT/dispatch.txt"
  # shellcheck disable=SC2086
  python3 packages/dlinfer-lmdeploy/bench/lmdeploy_e2e_gpu.py --timeout ${RUN_TIMEOUT:-120} ${BENCH_ARGS:-} \
    --out "$OUT/bench-lmdeploy.json" 2>&1 | tee "$OUT/bench.log" | tail -40
  rc=$(( rc | PIPESTATUS[0] ))
fi
exit $rc
