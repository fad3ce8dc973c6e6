"""Host work of a graph-mode decode step before its replay: the step's metadata build and the graph runner's refill.

    python packages/dlinfer-lmdeploy/bench/graph_step_host.py [--batches 1,64] [--out r.json]

Between two replays of a captured decode step the host builds the step's attention metadata
(``OpsBackend.update_step_context`` -> ``metadata.build``) and refills the graph's fixed buffers
(``DlinferGraphRunner._fill``); every device op there is a launch on the critical path of graph-mode decode (at
batch 1 the GPU idles between replays). This counts the ops that may launch a kernel (views left out) and times the
two calls on the host, at the Llama-3-8B decode shape's metadata (64-token blocks, 301 cached tokens per sequence),
with LMDeploy's tensors as it makes them for a non-``cuda`` device (int64 block table and lengths), for the torch
composition of the refill and, with ``--declared``, for a plugin that declares ``DeviceGraph.fill_decode_inputs``
(on the CPU host a no-op, its one launch not measured; ``--device cuda``: maca's Triton kernel, launched for real,
the metadata's tensors on the GPU, host CPU time per call with the launches queued asynchronously).
``--stand-in-triton`` (CPU host, ``TRITON_INTERPRET`` unset): the declared fill is maca's kernel launched through
Triton's own launch path with dlinfer-maca's stand-in driver (``tools/mock_triton_driver.py``: compiled for sm_90,
the C launcher a no-op), so the figure includes maca's wrapper and Triton's Python launch path.

Runs against whichever ``dlinfer_lmdeploy`` is importable, so an older checkout on ``PYTHONPATH`` gives the before
figures (``--declared`` needs the field, which older checkouts lack).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

BLOCK, CONTEXT, MAX_BLOCKS = 64, 301, 128


class _Model(torch.nn.Module):
    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return input_ids


STAND_IN = False
"""``--stand-in-triton``: on the CPU, maca's kernel through Triton's launch path with a stand-in driver."""


def _declared_fill(device: str) -> Any:
    if device == "cpu" and not STAND_IN:
        return lambda *a, **k: None
    from dlinfer_maca.plugin import CUDA_GRAPH

    return CUDA_GRAPH.fill_decode_inputs


def _runner(declared: bool, device: str) -> Any:
    from lmdeploy.pytorch.models.utils.cudagraph import CudaGraphMixin

    from dlinfer_lmdeploy import graph_runner as gr
    from dlinfer_lmdeploy.testing.host_graph import bare_backend

    class Model(_Model, CudaGraphMixin):
        pass

    plugin = bare_backend("graphstep")
    if declared:
        plugin = dataclasses.replace(plugin, graph=dataclasses.replace(plugin.graph,
                                                                       fill_decode_inputs=_declared_fill(device)))
    cache = SimpleNamespace(kernel_block_size=None, block_size=BLOCK, num_gpu_blocks=4096,
                            cudagraph_capture_batch_sizes=None, max_batches=256)
    model_config = SimpleNamespace(hf_config=SimpleNamespace(max_position_embeddings=BLOCK * MAX_BLOCKS))
    model = Model()
    model.ctx_mgr = SimpleNamespace(current_context=lambda: _CTX)
    return gr.DlinferGraphRunner(model, model_config, cache, SimpleNamespace(eager_mode=False), torch.device(device),
                                 plugin=plugin, ops_backend=object)


class _Ctx(SimpleNamespace):
    def global_is_decoding(self) -> bool:
        return True


_CTX = _Ctx()


def _step_context(batch: int, plugin: Any, device: str) -> SimpleNamespace:
    from lmdeploy.messages import QuantPolicy

    blocks = -(-CONTEXT // BLOCK)
    cache = torch.zeros(4096, *plugin.kv_block_shape(BLOCK, 8, 128)[:1], 1, 1, device=device)
    table = torch.randperm(4096)[: batch * blocks].view(batch, blocks).to(device)
    return SimpleNamespace(
        kv_caches=[(cache, cache)], q_seqlens=torch.ones(batch, dtype=torch.long, device=device),
        kv_seqlens=torch.full((batch,), CONTEXT, dtype=torch.long, device=device),
        q_start_loc=torch.arange(batch, device=device), block_offsets=table,
        input_ids=torch.zeros(1, batch, dtype=torch.long, device=device), is_decoding=True, max_q_seqlen=1,
        max_kv_seqlen=CONTEXT, sum_kv_seqlen=CONTEXT * batch, kv_quant_policy=QuantPolicy.NONE)


def _ops(fn: Any) -> list[str]:
    from torch.utils._python_dispatch import TorchDispatchMode

    views = {"slice", "view", "select", "unsqueeze", "squeeze", "alias", "expand", "_unsafe_view", "as_strided",
             "detach", "t", "transpose"}
    names: list[str] = []

    class Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            name = func.__name__.split(".")[0]
            if name not in views:
                names.append(name)
            return func(*args, **(kwargs or {}))

    with Mode():
        fn()
    return names


def measure(batch: int, declared: bool, repeats: int, steps: int, device: str = "cpu") -> dict[str, Any]:
    from dlinfer_lmdeploy import metadata

    runner = _runner(declared, device)
    plugin = runner.plugin
    ctx = _step_context(batch, plugin, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    pos = (ctx.kv_seqlens - 1)[None]
    state: dict[str, Any] = {}

    def build() -> None:
        state["meta"] = metadata.build(ctx, plugin)

    def kwargs() -> dict[str, Any]:
        return dict(input_ids=ctx.input_ids, position_ids=pos, past_key_values=[], attn_metadata=state["meta"])

    build()
    runner(**kwargs())  # capture (host stand-in graph)
    key, _ = runner._plan(kwargs())
    entry = runner.captured[key]

    def refill() -> None:
        runner._fill(entry, kwargs())

    build_ops, fill_ops = _ops(build), _ops(refill)
    times: dict[str, list[float]] = {"build": [], "refill": []}
    for _ in range(repeats):
        for name, fn in (("build", build), ("refill", refill)):
            t0 = time.thread_time()
            for _ in range(steps):
                fn()
            times[name].append((time.thread_time() - t0) / steps * 1e6)
            sync()
    return {"batch": batch, "device": device, "declared_fill": declared, "build_ops": build_ops, "refill_ops": fill_ops,
            "ops": len(build_ops) + len(fill_ops),
            **{f"{k}_cpu_us_min": round(min(v), 1) for k, v in times.items()},
            **{f"{k}_cpu_us_median": round(statistics.median(v), 1) for k, v in times.items()}}


def _install_stand_in_driver() -> None:
    import os
    import sys

    global STAND_IN
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("--stand-in-triton needs TRITON_INTERPRET unset (the kernel is compiled as for a GPU)")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "dlinfer-maca" / "tools"))
    import mock_triton_driver

    mock_triton_driver.install()
    STAND_IN = True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--declared", action="store_true", help="also a plugin declaring fill_decode_inputs")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--stand-in-triton", action="store_true",
                        help="CPU: the declared fill is maca's kernel through Triton's launch path (stand-in driver)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    if args.stand_in_triton:
        _install_stand_in_driver()
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        for declared in (False, True) if args.declared else (False,):
            row = measure(batch, declared, args.repeats, args.steps, args.device)
            rows.append(row)
            print(f"batch {batch:3d} {'declared fill' if declared else 'torch ops    '}: {row['ops']:2d} ops "
                  f"(build {len(row['build_ops'])}, refill {len(row['refill_ops'])}); CPU us min/median: build "
                  f"{row['build_cpu_us_min']}/{row['build_cpu_us_median']}, refill "
                  f"{row['refill_cpu_us_min']}/{row['refill_cpu_us_median']}")
            print(f"    build: {' '.join(row['build_ops'])}\n    refill: {' '.join(row['refill_ops'])}")
    if STAND_IN:
        import mock_triton_driver

        print(f"{len(mock_triton_driver.LAUNCHES)} refill launches reached the stand-in C launcher through Triton")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
