#!/bin/bash
# One device call for issue-10 work on an NVIDIA GPU with the maca plugin: the model table end to end (LLM and VLM
# rows, bf16 teacher-forcing checker, eager + graph), the vision-attention microbenchmark and the VLM serving benchmark.
# Needs .carry/ (git-ignored, built outside the repository): .carry/lmdeploy-0.18.0-nots.tgz (LMDeploy 0.18.0's cp312
# wheel unpacked without TurboMind's binaries) and .carry/whl/ (cp312 wheels of its import-time dependencies that
# the device image lacks) and the transformers wheel the CPU oracles use (tools/carry_oracle_wheels.sh), installed by
# tools/gpu_env.sh.
#   PHASES="vision tests vlm-bench compile-bench" bash tools/gpu_model_table.sh        (figures under $OUT, or ./gpu-out)
set -u
OUT=${OUT:-./gpu-out}; mkdir -p "$OUT"
PHASES=${PHASES:-vision tests}
source tools/gpu_env.sh || exit 1
python3 -c "import torch, transformers, torchvision; print('torch', torch.__version__, 'transformers', transformers.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"
rc=0
if [[ " $PHASES " == *" vision "* ]]; then
  timeout 120 python3 packages/dlinfer-lmdeploy/bench/vision_attention_gpu.py --out "$OUT/vision-attention.json" 2>&1 | tail -12
fi
if [[ " $PHASES " == *" tests "* ]]; then
  export DLINFER_E2E_STATS="$OUT/gpu-e2e-stats.jsonl" DLINFER_MODEL_TABLE_OUT="$OUT/model-table.json"
  timeout ${TEST_TIMEOUT:-420} python3 -m pytest -q -p no:cacheprovider packages/dlinfer-lmdeploy/tests -m gpu -rfE \
    --durations=15 ${TEST_K:+-k "$TEST_K"} ${TEST_ARGS:-} > "$OUT/gpu-tests.log" 2>&1
  rc=$?; tail -60 "$OUT/gpu-tests.log"
fi
if [[ " $PHASES " == *" vlm-bench "* ]]; then
  timeout ${BENCH_TIMEOUT:-300} python3 packages/dlinfer-lmdeploy/bench/vlm_e2e_gpu.py --out "$OUT/bench-vlm.json" ${BENCH_ARGS:-} 2>&1 \
    | tee "$OUT/bench-vlm.log" | tail -30
  rc=$(( rc | PIPESTATUS[0] ))
fi
if [[ " $PHASES " == *" compile-bench "* ]]; then
  timeout ${BENCH_TIMEOUT:-540} python3 packages/dlinfer-maca/tools/compiled_decode_gpu.py --out "$OUT/compiled-decode.json" \
    ${COMPILE_ARGS:---shapes 1b} 2>&1 | tee "$OUT/compiled-decode.log" | tail -20
  rc=$(( rc | PIPESTATUS[0] ))
fi
exit $rc
