#!/usr/bin/env bash
# Prepare an offline wheel directory for a GPU machine without network access (run where pip can reach PyPI).
#
#   bash packages/dlinfer-lmdeploy/bench/make_offline_wheels.sh .whl/lmdeploy 311
#
# Writes into DEST (default .whl/lmdeploy):
#   * lmdeploy-0.18.0 repacked WITHOUT its TurboMind .so files (the PyTorch engine never loads them;
#     the full wheel is 106 MB, the slim one a few MB), installable with --no-deps;
#   * the pure-python / small binary dependencies of requirements-lmdeploy.txt for CPython PYVER
#     (manylinux x86_64), without torch/triton/transformers (the GPU image has them).
# On the GPU machine:
#   pip install --no-index --no-deps DEST/lmdeploy-0.18.0-*.whl
#   pip install --no-index --find-links DEST -r packages/dlinfer-lmdeploy/requirements-offline.txt
set -euo pipefail
DEST=${1:-.whl/lmdeploy}
PYVER=${2:-311}
HERE=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$DEST"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

pip download --no-deps -d "$TMP" "lmdeploy==0.18.0" --python-version "$PYVER" \
    --platform manylinux_2_28_x86_64 --only-binary=:all:
python - "$TMP" "$DEST" <<'PY'
import pathlib, sys, zipfile, hashlib, base64
src_dir, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
src = next(src_dir.glob("lmdeploy-*.whl"))
out = dest / src.name
drop = lambda n: n.startswith("lmdeploy/lib/") or "_turbomind" in n
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
    record_name = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
    rows = []
    for info in zin.infolist():
        if drop(info.filename) or info.filename == record_name:
            continue
        data = zin.read(info.filename)
        zout.writestr(info, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{info.filename},sha256={digest},{len(data)}")
    rows.append(f"{record_name},,")
    zout.writestr(record_name, "\n".join(rows) + "\n")
print(f"slim wheel: {out} ({out.stat().st_size / 2**20:.1f} MiB)")
PY

grep -vE '^\s*(#|$)|^(transformers|tokenizers|safetensors)' "$HERE/requirements-lmdeploy.txt" > "$HERE/requirements-offline.txt"
pip download -d "$DEST" -r "$HERE/requirements-offline.txt" --python-version "$PYVER" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --only-binary=:all: --no-deps
# dependencies of those that the GPU image may lack
pip download -d "$DEST" addict termcolor yapf platformdirs --python-version "$PYVER" --only-binary=:all: --no-deps
du -sh "$DEST"
