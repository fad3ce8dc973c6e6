#!/bin/bash
# Tensor parallelism on N NVIDIA GPUs with the maca plugin (issues 12 and 16), one device call per phase list:
#   tests : the model table's dense and MoE rows at tp=N, eager + graph, through the bf16 teacher-forcing checker,
#           maca and LMDeploy's own cuda (the peer) in the same call (tests/test_e2e_gpu.py with DLINFER_TP=N);
#   ray   : maca at tp=N on LMDeploy's ray executor (only where ray is importable) == the mp executor's tokens;
#   bench : bench/lmdeploy_tp_gpu.py, maca vs cuda at tp=N (and tp=1 with TP_COMPARE=1).
# Every engine runs in a child process under a deadline; on timeout the Python stacks of every rank are printed
# (PYTHONFAULTHANDLER + SIGABRT, dlinfer_lmdeploy.testing.child). NVLink multicast is off in every process.
# Needs .carry/ (git-ignored, built outside the repository): .carry/lmdeploy-0.18.0-nots.tgz (LMDeploy 0.18.0's cp312
# wheel unpacked without TurboMind's binaries) and .carry/whl/ (cp312 wheels of its import-time dependencies that
# the device image lacks), installed as in tools/gpu_env.sh.
#   TP=2 PHASES="tests ray bench" bash tools/gpu_tp.sh                   (nvidia-h200-x2; logs under $OUT)
#   TP=4 KINDS="llama3 qwen2_7b qwen2_57b_a14b qwen3_moe" BENCH_MODELS=qwen2_57b_a14b,llama3_70b bash tools/gpu_tp.sh
#   DRY_RUN=1 bash tools/gpu_tp.sh       (this machine, no GPU: syntax, imports, test collection, bench --dry-run)
set -u
OUT=${OUT:-./gpu-out}; mkdir -p "$OUT"
TP=${TP:-2}
PHASES=${PHASES:-tests ray bench}
KINDS=${KINDS:-llama3 qwen2_7b mixtral_8x7b qwen2_57b_a14b qwen3_moe}  # dense and MoE rows of the model table
BENCH_MODELS=${BENCH_MODELS:-$([ "$TP" -ge 4 ] && echo qwen2_57b_a14b,llama3_70b || echo mixtral_8x7b,qwen2_57b_a14b)}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONFAULTHANDLER=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 NCCL_DEBUG=${NCCL_DEBUG:-WARN}
K=$(for k in $KINDS; do printf 'concurrent_%s or ' "$k"; done); K=${K% or }

if [ "${DRY_RUN:-0}" = 1 ]; then  # CPU: what can be checked without GPUs
  PY=${PY:-python3}
  export TRITON_INTERPRET=1 TORCH_DEVICE_BACKEND_AUTOLOAD=0
  bash -n "$0" || exit 1
  DLINFER_TP=$TP DLINFER_E2E_DEVICES=maca,cuda $PY -m pytest -q -p no:cacheprovider --co \
    packages/dlinfer-lmdeploy/tests/test_e2e_gpu.py -m gpu -k "$K" 2>&1 | tail -3
  $PY packages/dlinfer-lmdeploy/bench/lmdeploy_tp_gpu.py --dry-run --tp 2 --models "$BENCH_MODELS" \
    --model-root "${TMPDIR:-/tmp}/tp-bench-dry" --timeout 240 --out "$OUT/bench-dry.json" > "$OUT/bench-dry.log" 2>&1
  drc=$?; tail -6 "$OUT/bench-dry.log"
  exit $drc
fi

SITE=/tmp/site
if [ ! -d $SITE/lmdeploy ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .carry/whl/*.whl \
    && tar xzf .carry/lmdeploy-0.18.0-nots.tgz -C $SITE || exit 1
fi
# packages on PYTHONPATH (no autoload .pth): the spawned tp workers must wire dlinfer in themselves
export PYTHONPATH=$SITE:packages/dlinfer-core/src:packages/dlinfer-maca/src:packages/dlinfer-lmdeploy/src
export DLINFER_PLUGINS=dlinfer_maca.plugin
python3 -c "import torch; n=torch.cuda.device_count(); print('torch', torch.__version__, n, 'x', torch.cuda.get_device_name()); assert n >= $TP, f'TP=$TP needs $TP GPUs, found {n}'" || exit 1
nvidia-smi topo -m > "$OUT/topo.txt" 2>&1
rc=0
if [[ " $PHASES " == *" tests "* ]]; then
  export DLINFER_TP=$TP DLINFER_E2E_DEVICES=${DEVICES:-maca,cuda} DLINFER_GPU_DEADLINE_S=${DEADLINE_S:-240}
  export DLINFER_E2E_STATS="$OUT/gpu-e2e-tp$TP-stats.jsonl"
  timeout ${TEST_TIMEOUT:-540} python3 -m pytest -q -p no:cacheprovider packages/dlinfer-lmdeploy/tests/test_e2e_gpu.py \
    -m gpu -k "$K" -rfEs --durations=0 ${TEST_ARGS:-} > "$OUT/gpu-tp$TP-tests.log" 2>&1
  rc=$?; tail -60 "$OUT/gpu-tp$TP-tests.log"
fi
if [[ " $PHASES " == *" ray "* ]]; then
  if python3 -c "import ray" 2>/dev/null; then
    timeout ${RAY_TIMEOUT:-300} python3 - "$TP" <<'EOF' 2>&1 | tee "$OUT/gpu-tp$TP-ray.log" | tail -20
import sys, tempfile
import torch
from dlinfer_lmdeploy.testing import generate_cli
from dlinfer_lmdeploy.testing.model_table import BY_KIND
tp = int(sys.argv[1])
path = BY_KIND["llama3"].build(tempfile.mkdtemp(), dtype=torch.bfloat16)
prompts = ["Hello world", "The quick brown fox jumps over the lazy dog."]
base = {"device_type": "maca", "tp": tp, "dtype": "bfloat16", "eager_mode": True}
mp = generate_cli.run(path, 16, {**base, "distributed_executor_backend": "mp"}, prompts, deadline_s=120)
ray = generate_cli.run(path, 16, {**base, "distributed_executor_backend": "ray"}, prompts, deadline_s=150)
print("mp ", mp["output_ids"]); print("ray", ray["output_ids"])
assert ray["output_ids"] == mp["output_ids"], "ray and mp executors differ"
print(f"RAY OK: maca tp={tp} on the ray executor == the mp executor")
EOF
    rc=$(( rc | PIPESTATUS[0] ))
  else
    echo "ray phase skipped: ray is not importable here (not in .carry)" | tee "$OUT/gpu-tp$TP-ray.log"
  fi
fi
if [[ " $PHASES " == *" bench "* ]]; then
  # shellcheck disable=SC2086
  timeout ${BENCH_TIMEOUT:-580} python3 packages/dlinfer-lmdeploy/bench/lmdeploy_tp_gpu.py --tp "$TP" \
    --models "$BENCH_MODELS" --layers ${LAYERS:-8} ${TP_COMPARE:+--tp-compare $TP_COMPARE} ${BENCH_ARGS:-} \
    --out "$OUT/bench-tp$TP.json" 2>&1 | tee "$OUT/bench-tp$TP.log" | tail -30
  rc=$(( rc | PIPESTATUS[0] ))
fi
exit $rc
