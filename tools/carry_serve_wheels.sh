#!/bin/bash
# Downloads into .carry/whl-serve/ (git-ignored with .carry/) the cp312 manylinux/any wheels that
# `lmdeploy serve api_server` and the load client (dlinfer_lmdeploy.testing.serve_load) import and that
# .carry/whl (LMDeploy's own import-time dependencies) does not hold: the OpenAI server stack (fastapi, starlette,
# uvicorn), the OpenAI client (openai and its HTTP stack) and psutil. tools/gpu_serve.sh installs them on the GPU
# machine into their own site directory. Versions are those of the reference environment REF_PY (the CI `tests`
# env, where tests/test_serve_cpu.py runs this server), so the set is one that is known to work together;
# a name the reference env lacks is downloaded unpinned.
#   bash tools/carry_serve_wheels.sh            (then name .carry in the device call's carry list)
#   PYVER=3.11 DEST=/tmp/carry311/whl-serve bash tools/carry_serve_wheels.sh   (for a CPU emulation of the GPU layout)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
mkdir -p .git/info; grep -qx '/.carry/' .git/info/exclude 2>/dev/null || echo '/.carry/' >> .git/info/exclude
REF_PY=${REF_PY:-.nox/tests/bin/python}
DEST=${DEST:-.carry/whl-serve}
PYVER=${PYVER:-3.12}
# what the server's and the client's processes import beyond .carry/whl and the GPU image (torch, numpy, triton,
# transformers and its hub stack); traced from a CPU run of serve_load (sys.modules of server, engine, client)
# and a CPU run of tools/gpu_serve.sh in a venv holding only what the GPU image is known to have
NAMES="fastapi starlette annotated-doc opentelemetry-api uvicorn click h11 anyio idna sniffio openai jiter
 httpx2 httpcore2 truststore certifi psutil requests urllib3 charset-normalizer prometheus-client"
P="--only-binary=:all: --python-version $PYVER --implementation cp --platform manylinux_2_28_x86_64 \
 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 --platform manylinux_2_24_x86_64 \
 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 \
 --platform manylinux1_x86_64 --platform any"
SPECS=()
for n in $NAMES; do
  v=$([ -x "$REF_PY" ] && "$REF_PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$n" \
        2>/dev/null || true)
  SPECS+=("$n${v:+==$v}")
done
rm -rf "$DEST"; mkdir -p "$DEST"
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps $P -d "$DEST" "${SPECS[@]}"
ls "$DEST" > "$DEST/MANIFEST.txt"
echo "${SPECS[*]}"
du -sh "$DEST"
