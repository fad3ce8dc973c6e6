#!/bin/bash
# One device call (one H200, < 9 min): `lmdeploy serve api_server` under load, dlinfer's maca vs LMDeploy's own cuda.
# An 8B-shaped Llama-3 checkpoint with random bf16 weights is built on the GPU (the Llama-3-8B shape of
# packages/dlinfer-maca/tools/compiled_decode_gpu.py, tiny_models.build_on_device); then for each device of ORDER
# (ABBA: maca cuda cuda maca) a fresh server `lmdeploy serve api_server MODEL --backend pytorch --device D
# --max-batch-size 128 --cache-max-entry-count 0.5` (graph mode, LMDeploy's defaults otherwise) gets the load of
# `python -m dlinfer_lmdeploy.testing.serve_load` (256 requests over 64 distinct ones, all sent at once, prompts of
# 1-160 tokens, 1-128 output tokens each with ignore_eos, half streamed, every 8th cancelled midway; before it, a
# warm-up with its first 128 requests at once keeps kernel JIT and graph capture up to batch 128 out of the figures),
# and is stopped with SIGTERM (its process group killed if anything is left).
# Out ($OUT, or ./gpu-out): serve-<i>-<device>.json per run (figures, problems), server-<i>-<device>.log,
# summary.md (req/s, output tok/s, TTFT/ITL p50/p99 per run, medians per device, maca/cuda ratio), env.txt.
# Every run has a deadline (serve_load --deadline: client and server stacks, then kill, rc 124) within the call's
# budget (TOTAL_S); NVLink multicast is off in every process.
# Needs .carry/ (git-ignored, built outside the repository): .carry/lmdeploy-0.18.0-nots.tgz (LMDeploy 0.18.0's cp312
# wheel unpacked without TurboMind's binaries) and .carry/whl/ (cp312 wheels of its import-time dependencies that
# the device image lacks), installed as in tools/gpu_env.sh,
# and .carry/whl-serve/ (tools/carry_serve_wheels.sh):
#   run(command="bash tools/gpu_serve.sh", carry=[".carry"])
#   ORDER="maca cuda" REQUESTS=128 bash tools/gpu_serve.sh                   (fewer runs / requests)
#   DRY_RUN=1 bash tools/gpu_serve.sh     (this machine, no GPU: the same flow on the CPU device with a tiny model
#                                          built by the same builder; PY= the Python of an env with the serve extra)
#   DRY_RUN=1 PY=/usr/bin/python3.11 DRY_SITE=.nox/tests/lib/python3.11/site-packages bash tools/gpu_serve.sh
#                                         (the GPU layout: a bare interpreter, the env's packages on PYTHONPATH)
#   DRY_RUN=1 PY=<venv with only torch, triton, transformers> DRY_CARRY=<.carry built for its Python version>
#     SITE=<empty dir> SERVE_SITE=<empty dir> bash tools/gpu_serve.sh   (the GPU machine's install path, on the CPU)
#     (checked with a python3.11 venv of torch 2.13 CPU, triton 3.6, transformers 5.17 + deps, pillow, psutil,
#     pluggy, pytest, requests: what LMDeploy's engine imports, so what past GPU runs prove the image has; the
#     carry: .carry/whl's list and carry_serve_wheels.sh downloaded with PYVER=3.11, the same lmdeploy tarball)
set -u
T0=$SECONDS
ROOT=$(pwd)
OUT=${OUT:-./gpu-out}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
DRY=${DRY_RUN:-0}
ORDER=${ORDER:-maca cuda cuda maca}
TOTAL_S=${TOTAL_S:-530}          # the whole call, install and model build included
RUN_S=${RUN_S:-200}              # one run at most: server start, warm-up, load, stop
REQUESTS=${REQUESTS:-256} DISTINCT=${DISTINCT:-64} MAX_TOKENS=${MAX_TOKENS:-128} WARMUP=${WARMUP:-128}
MAX_BATCH=${MAX_BATCH:-128}
# KV cache at half the free memory (as bench/lmdeploy_e2e_gpu.py and the compiled-decode runs of the 8B shape): far
# above what the load holds at once (256 x <= 288 tokens), and headroom for activations and graphs on both devices
SERVE_ARGS=${SERVE_ARGS---cache-max-entry-count 0.5}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONFAULTHANDLER=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
bash -n "$0" || exit 1

# --- Python environment: the carry on the GPU machine; the given env (lmdeploy + dlinfer installed) on a dry run.
# lmdeploy serve spawns its engine process (and the mp executor its workers) with multiprocessing's spawn: a fresh
# interpreter that wires dlinfer in only through the dlinfer_lmdeploy_autoload.pth hook of a pip install. Here
# the packages are on PYTHONPATH, where .pth files are not read; a sitecustomize.py (first on PYTHONPATH, inherited
# by every child) reads that .pth from the package's source tree (site.addsitedir), exactly as an install does.
BOOT=${TMPDIR:-/tmp}/dlinfer-serve-boot; mkdir -p "$BOOT"
[ "$DRY" = 1 ] && PY=${PY:-$ROOT/.nox/tests/bin/python} || PY=python3
# a sitecustomize the image already has (found before ours shadows it) is run by ours
CHAINED=$($PY -c "import importlib.util as u; s = u.find_spec('sitecustomize'); print(s.origin if s and s.origin else '')" 2>/dev/null)
[ "$CHAINED" = "$BOOT/sitecustomize.py" ] && CHAINED=
cat > "$BOOT/sitecustomize.py" <<'EOF'
"""Written by tools/gpu_serve.sh: process the .pth files of DLINFER_SITE_DIRS (site dirs appended to sys.path),
then run the sitecustomize this one shadows (DLINFER_CHAINED_SITECUSTOMIZE), if any."""
import os
import site

for _d in filter(None, os.environ.get("DLINFER_SITE_DIRS", "").split(os.pathsep)):
    site.addsitedir(_d)
_chained = os.environ.get("DLINFER_CHAINED_SITECUSTOMIZE")
if _chained and os.path.exists(_chained):
    with open(_chained) as _f:
        exec(compile(_f.read(), _chained, "exec"))
EOF
export DLINFER_CHAINED_SITECUSTOMIZE=$CHAINED
export DLINFER_SITE_DIRS=$ROOT/packages/dlinfer-lmdeploy/src
PKGS=$ROOT/packages/dlinfer-core/src:$ROOT/packages/dlinfer-maca/src:$ROOT/packages/dlinfer-lmdeploy/src
if [ "$DRY" = 1 ]; then
  export TRITON_INTERPRET=1 TORCH_DEVICE_BACKEND_AUTOLOAD=0
  ORDER=${DRY_ORDER:-cpu cpu}; REQUESTS=${DRY_REQUESTS:-32}; DISTINCT=${DRY_DISTINCT:-8}; MAX_TOKENS=${DRY_MAX_TOKENS:-16}
  WARMUP=${DRY_WARMUP:-8}; MAX_BATCH=${DRY_MAX_BATCH:-16}; RUN_S=${DRY_RUN_S:-240}; TOTAL_S=${DRY_TOTAL_S:-900}
  MODEL=${TMPDIR:-/tmp}/serve-dry-llama
else
  export DLINFER_PLUGINS=dlinfer_maca.plugin
  MODEL=/tmp/llama-8b-rand-bf16-serve
fi
if [ "$DRY" != 1 ] || [ -n "${DRY_CARRY:-}" ]; then
  # the carry, as on the GPU machine (DRY_CARRY=<dir>: one built for PY's Python version, PY: a bare "image")
  CARRY=${DRY_CARRY:-.carry} SITE=${SITE:-/tmp/site} SERVE_SITE=${SERVE_SITE:-/tmp/site-serve}
  [ -d "$CARRY/whl-serve" ] || { echo "no $CARRY/whl-serve: run tools/carry_serve_wheels.sh here and carry .carry"; exit 1; }
  if [ ! -d "$SITE/lmdeploy" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$CARRY"/whl/*.whl \
      && tar xzf "$CARRY"/lmdeploy-0.18.0-nots.tgz -C "$SITE" || exit 1
  fi
  if [ ! -d "$SERVE_SITE/fastapi" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SERVE_SITE" \
      "$CARRY"/whl-serve/*.whl || exit 1
  fi
  # the serve wheels (versions tested together in CI) before the image's site-packages; torch, numpy, triton and
  # transformers' own stack are not among them. If they break an import, they go after it instead (gaps only).
  export PYTHONPATH=$BOOT:$SITE:$SERVE_SITE:$PKGS
else
  # DRY_SITE=<an env's site-packages> with PY=<a bare interpreter of the same version>: the GPU layout (packages
  # on PYTHONPATH, no .pth read but through the sitecustomize); without it, PY's env with its own autoload hook
  export PYTHONPATH=$BOOT${DRY_SITE:+:$DRY_SITE:$PKGS}
fi

# --- fail fast: the hook is active in a fresh interpreter, lmdeploy wires dlinfer in, the serve stack imports
SMOKE='
import sys
assert "dlinfer_lmdeploy_autoload" in sys.modules, "the autoload hook did not run at start-up (sitecustomize)"
import lmdeploy
assert "dlinfer_lmdeploy" in sys.modules, "importing lmdeploy did not import dlinfer_lmdeploy"
import lmdeploy.serve.openai.api_server, lmdeploy.cli, fastapi, uvicorn, openai, psutil, torch, transformers
import prometheus_client  # lmdeploy serve imports it at start (metrics on by default), not at import
import dlinfer_lmdeploy
from dlinfer_lmdeploy.testing import serve_load
devs = dlinfer_lmdeploy.lmdeploy_devices()
want = sys.argv[1].split()
assert all(d in devs or d == "cuda" for d in want), f"devices {want}: dlinfer serves {devs}"
for m in (lmdeploy, fastapi, uvicorn, openai, torch, transformers):
    version = getattr(m, "__version__", "?")
    print(f"{m.__name__} {version} {m.__file__}")
print("dlinfer devices", devs, "| cuda:", torch.cuda.is_available() and torch.cuda.get_device_name())
'
if ! timeout -s ABRT 120 $PY -c "$SMOKE" "$ORDER" > "$OUT/env.txt" 2>&1; then
  if [ -n "${SERVE_SITE:-}" ]; then
    echo "imports failed with the serve wheels first on the path; retrying with them after site-packages"
    tail -5 "$OUT/env.txt"
    export PYTHONPATH=$BOOT:$SITE:$PKGS DLINFER_SITE_DIRS=$DLINFER_SITE_DIRS:$SERVE_SITE
    timeout -s ABRT 120 $PY -c "$SMOKE" "$ORDER" > "$OUT/env.txt" 2>&1 || { cat "$OUT/env.txt"; exit 1; }
  else
    cat "$OUT/env.txt"; exit 1
  fi
fi
{ git rev-parse HEAD 2>/dev/null; echo "PYTHONPATH=$PYTHONPATH"; echo "DLINFER_SITE_DIRS=$DLINFER_SITE_DIRS"; } >> "$OUT/env.txt"
[ "$DRY" = 1 ] || nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv >> "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# --- the model: Llama-3-8B shape (tiny_models.llama_3_8b_config, as the e2e benches) in bf16 on the GPU; dry run:
# the same builder, a tiny shape in fp32 on the CPU
BUILD='
import sys, time
from pathlib import Path
import torch
from dlinfer_lmdeploy.testing import tiny_models
dry = sys.argv[2] == "1"
t0 = time.perf_counter()
path, tmp = Path(sys.argv[1]), Path(sys.argv[1] + ".partial")
if not (path / "config.json").exists():  # built under another name, renamed when complete
    config = tiny_models.llama_3_2_1b_config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16) if dry else tiny_models.llama_3_8b_config()
    tiny_models.build_on_device(config, tmp, device="cpu" if dry else "cuda",
                                dtype=torch.float32 if dry else torch.bfloat16)
    tmp.rename(path)
n = sum(p.stat().st_size for p in path.glob("*.safetensors"))
print(f"model {path}: {n / 2**30:.2f} GiB of safetensors, {time.perf_counter() - t0:.1f} s")
'
rm -rf "$MODEL.partial"
timeout -s ABRT 300 $PY -c "$BUILD" "$MODEL" "$DRY" > "$OUT/build.log" 2>&1; grep -v "Writing model shards" "$OUT/build.log" | tail -3
[ -f "$MODEL/config.json" ] || { echo "model build failed:"; tail -40 "$OUT/build.log"; exit 1; }
echo "ready after $((SECONDS - T0)) s"

# --- the runs, each in a fresh server
rc=0 i=0 files=()
for dev in $ORDER; do
  i=$((i + 1))
  left=$((TOTAL_S - (SECONDS - T0) - 15))
  deadline=$(( left < RUN_S ? left : RUN_S ))
  name=serve-$i-$dev
  files+=("$OUT/$name.json")
  if [ "$deadline" -lt 60 ]; then
    echo "$name skipped: $left s left of TOTAL_S=$TOTAL_S"
    echo "{\"summary\": {\"device\": \"$dev\", \"error\": \"skipped: no time left\"}, \"problems\": []}" > "$OUT/$name.json"
    rc=1; continue
  fi
  echo "=== $name (deadline $deadline s, $((SECONDS - T0)) s into the call)"
  # shellcheck disable=SC2086
  timeout -s ABRT -k 10 $((deadline + 30)) $PY -m dlinfer_lmdeploy.testing.serve_load "$MODEL" --device "$dev" \
    --requests "$REQUESTS" --distinct "$DISTINCT" --max-tokens "$MAX_TOKENS" --ignore-eos --no-compare \
    --warmup "$WARMUP" --deadline "$deadline" --start-deadline "$deadline" --timeout "$deadline" \
    --log "$OUT/server-$i-$dev.log" --json "$OUT/$name.json" --pid-file "$OUT/.server-$i.pid" \
    -- --max-batch-size "$MAX_BATCH" $SERVE_ARGS > "$OUT/$name.out" 2>&1
  r=$?
  tail -25 "$OUT/$name.out"
  [ $r -eq 0 ] || { echo "$name: exit status $r"; rc=1; }
  # backstop: the server's process group must be gone (serve_load stops it; a killed client cannot)
  if [ -f "$OUT/.server-$i.pid" ]; then
    pg=$(cat "$OUT/.server-$i.pid")
    alive=$(ps -eo pid=,pgid=,stat=,args= | awk -v g="$pg" '$2 == g && $3 !~ /^Z/' | cut -c1-200)
    if [ -n "$alive" ]; then
      echo "$name: processes of the server's group $pg still running, killed:"; echo "$alive"
      kill -KILL -- "-$pg" 2>/dev/null; rc=1; sleep 3
    fi
    rm -f "$OUT/.server-$i.pid"
  fi
  [ "$DRY" = 1 ] || nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader 2>/dev/null \
    | sed "s/^/$name: GPU still held by: /"
done

$PY -m dlinfer_lmdeploy.testing.serve_load --table "${files[@]}" > "$OUT/summary.md" 2>/dev/null
{ echo; echo "model $MODEL; $REQUESTS requests over $DISTINCT distinct, max tokens $MAX_TOKENS, ignore_eos, warm-up $WARMUP;" \
  "--max-batch-size $MAX_BATCH $SERVE_ARGS; order $ORDER; $((SECONDS - T0)) s"; } >> "$OUT/summary.md"
cat "$OUT/summary.md"
exit $rc
