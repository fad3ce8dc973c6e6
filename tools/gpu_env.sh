# Sourced by the GPU drivers: LMDeploy 0.18 from .carry/ into /tmp/site (.carry/lmdeploy-0.18.0-nots.tgz: LMDeploy
# 0.18.0's cp312 wheel unpacked without TurboMind's binaries; .carry/whl/: cp312 wheels of its import-time dependencies
# that the device image lacks; git-ignored, built outside the repository),
# the dlinfer packages from the source tree, the maca plugin, NVLink multicast off (device README).
# A warm machine keeps /tmp/site between calls: install again when the carried wheel set differs from the last one.
# tools/carry_oracle_wheels.sh adds the transformers wheel of the CPU oracles (the image's 5.17 lacks InternLM3).
SITE=/tmp/site
wheels=$(ls .carry/whl .carry/*.tgz | md5sum)
if [ ! -d $SITE/lmdeploy ] || [ "$(cat $SITE/.carry-wheels 2>/dev/null)" != "$wheels" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .carry/whl/*.whl \
    && tar xzf .carry/lmdeploy-0.18.0-nots.tgz -C $SITE && echo "$wheels" > $SITE/.carry-wheels || return 1
fi
ls .carry/whl/transformers-*.whl > /dev/null 2>&1 \
  || echo "gpu_env: no transformers wheel in .carry/whl (tools/carry_oracle_wheels.sh): the image's transformers runs the oracles" >&2
export PYTHONPATH=$SITE:packages/dlinfer-core/src:packages/dlinfer-maca/src:packages/dlinfer-lmdeploy/src
export DLINFER_PLUGINS=dlinfer_maca.plugin PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
