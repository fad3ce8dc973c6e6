#!/bin/bash
# One device call for the performance work (issue 13) on one NVIDIA GPU with the maca plugin.
#   PHASES="tests tune tune-quant opbench e2e host graph-host" bash tools/gpu_perf.sh   (outputs under $OUT, or ./gpu-out)
# tests: the model table's GPU tests (tools/gpu_model_table.sh); tune: launch-setting sweep of the quantisers and
# paged decode; tune-quant: the W4A16/W8A8 sweep; opbench: python -m dlinfer_maca.bench --only $BENCH_ONLY;
# e2e: lmdeploy_e2e_gpu.py $E2E_ARGS; profile: lmdeploy_tp_gpu.py at tp=1, one unprofiled child per device and a
# profiled decode window per batch size of $PROFILE_BATCHES (default 1; e.g. "1 64") ($PROFILE_MODELS, $PROFILE_LAYERS, $PROFILE_ARGS); long: long_context_gpu.py $LONG_ARGS; host: profile_batch1.py $HOST_ARGS; graph-host: graph_step_host.py on the GPU
# (host time of a graphed decode step's metadata and refill, torch ops vs maca's one-launch refill). Each phase has its
# own timeout.
set -u
OUT=${OUT:-./gpu-out}; mkdir -p "$OUT"
PHASES=${PHASES:-tune}
source tools/gpu_env.sh || exit 1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv > "$OUT/env.txt" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" \
  | tee -a "$OUT/env.txt"
rc=0
phase() { [[ " $PHASES " == *" $1 "* ]]; }
if phase tests; then
  OUT="$OUT" PHASES=tests bash tools/gpu_model_table.sh > "$OUT/model-table-phase.log" 2>&1; rc=$(( rc | $? ))
  grep -E "passed|failed" "$OUT/model-table-phase.log" | tail -5
fi
if phase tune; then
  timeout ${TUNE_TIMEOUT:-300} python3 packages/dlinfer-maca/tools/tune_norm_decode_gpu.py --out "$OUT" ${TUNE_ARGS:-} \
    2>&1 | tee "$OUT/tune.log" | grep -v "^ " | tail -80
  rc=$(( rc | PIPESTATUS[0] ))
fi
if phase tune-quant; then
  timeout ${TUNE_QUANT_TIMEOUT:-300} python3 packages/dlinfer-maca/tools/tune_quant_gpu.py --out "$OUT" ${TUNE_QUANT_ARGS:-} \
    2>&1 | tee "$OUT/tune-quant.log" | tail -80
  rc=$(( rc | PIPESTATUS[0] ))
fi
if phase opbench; then
  timeout ${BENCH_TIMEOUT:-300} python3 -m dlinfer_maca.bench --no-compile --out "$OUT" ${BENCH_ONLY:+--only $BENCH_ONLY} \
    2>&1 | tee "$OUT/bench.log" | tail -60
  rc=$(( rc | PIPESTATUS[0] ))
fi
if phase e2e; then
  timeout ${E2E_TIMEOUT:-540} python3 packages/dlinfer-lmdeploy/bench/lmdeploy_e2e_gpu.py --out "$OUT/e2e.json" ${E2E_ARGS:-} \
    2>&1 | tee "$OUT/e2e.log" | tail -40
  rc=$(( rc | PIPESTATUS[0] ))
fi
if phase profile; then  # graph mode, tp=1: tok/s, batch-1 ms/token and the kernel time by kind from a profiled window
  # one unprofiled child per device, then one profiled window per batch size of $PROFILE_BATCHES (default 1; e.g.
  # "1 64"), on one model build
  B=${PROFILE_BATCHES:-1}; B=${B// /,}
  tag=${PROFILE_TAG:-profile}-b${B//,/-}
  timeout ${PROFILE_TIMEOUT:-540} python3 packages/dlinfer-lmdeploy/bench/lmdeploy_tp_gpu.py --tp 1 --profile-tp1 --cleanup \
    --models ${PROFILE_MODELS:-llama3_8b} --layers ${PROFILE_LAYERS:-32} --model-root /tmp/perf-models \
    --profile-batch "$B" --out "$OUT/tp1-$tag.json" ${PROFILE_ARGS:-} 2>&1 | tee "$OUT/tp1-$tag.log" | tail -20
  rc=$(( rc | PIPESTATUS[0] ))
fi
if phase long; then  # 32k-token prefill + decode, prefix caching on, maca vs cuda
  timeout ${LONG_TIMEOUT:-540} python3 packages/dlinfer-lmdeploy/bench/long_context_gpu.py --model-root /tmp/perf-models \
    --out "$OUT/long-context.json" ${LONG_ARGS:-} 2>&1 | tee "$OUT/long-context.log" | tail -12
  rc=$(( rc | PIPESTATUS[0] ))
fi
if phase host; then
  timeout ${HOST_TIMEOUT:-300} python3 packages/dlinfer-lmdeploy/bench/profile_batch1.py --out "$OUT/host" ${HOST_ARGS:-} \
    2>&1 | tee "$OUT/host.log" | tail -40
  rc=$(( rc | PIPESTATUS[0] ))
fi
if phase graph-host; then
  timeout ${GRAPH_HOST_TIMEOUT:-120} python3 packages/dlinfer-lmdeploy/bench/graph_step_host.py --device cuda --declared \
    --out "$OUT/graph-step-host.json" 2>&1 | tee "$OUT/graph-step-host.log" | tail -20
  rc=$(( rc | PIPESTATUS[0] ))
fi
exit $rc
