#!/bin/bash
# Adds to .carry/whl/ the transformers wheel that the CPU oracles use (the version in the nox "tests" environment, or
# $TRANSFORMERS_VERSION), for the GPU model-table tests: the device image's transformers 5.17 has no InternLM3Config,
# so the internlm3 row fails there without it. Run after /work/shared/tools/lmdeploy-device-carry.sh (or any script that
# builds .carry/), from the repository root.
set -euo pipefail
V=${TRANSFORMERS_VERSION:-$(.nox/tests/bin/python -c "import transformers; print(transformers.__version__)" 2>/dev/null \
  || echo 5.24.0)}
mkdir -p .carry/whl
rm -f .carry/whl/transformers-*.whl  # one version only: two stop the whole install
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform any -d .carry/whl "transformers==$V"
ls .carry/whl/transformers-*.whl
