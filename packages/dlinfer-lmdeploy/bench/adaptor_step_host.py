"""Host time of dlinfer's part of one eager batch-1 decode step, without LMDeploy's engine around it.

    python packages/dlinfer-lmdeploy/bench/adaptor_step_host.py [--layers 32] [--device cpu] [--kernels null]
    python packages/dlinfer-lmdeploy/bench/adaptor_step_host.py --device ascend-sim

Replays what LMDeploy's Llama calls per decode step on the adaptor: ``metadata.build`` once, then per layer the
Impls in model order (RMSNorm, qkv Linear, the qkv split LMDeploy does itself, in-place rotary, paged attention,
o Linear, add-RMSNorm, gate_up Linear, SiluAndMul, down Linear), with the Llama-3-8B shape (hidden 4096, 32/8
heads of 128, MLP 14336). ``--kernels null`` (default) replaces every op of the dispatch table by an empty result
of its shape (``profile_batch1.NULL_FAST``): the figures are then the host cost of the adaptor, the public
``dlinfer.ops`` wrappers and torch's allocations, as on a device whose kernels run asynchronously; ``--kernels
active`` keeps the active backend's kernels (on a GPU: the vendor adaptor and its launches included).

The same step is also run calling the dispatch table directly with ready views (no Impl, no ``dlinfer.ops``
wrapper, no metadata build): the difference is the adaptor's own cost. Reports the minimum over ``--repeats``
timings of ``--steps`` steps each (host noise only adds time), aten ops per step (``TorchDispatchMode``) by
where they were issued, and writes JSON with ``--out``.

``--device ascend-sim``: the Ascend plugin on dlinfer-ascend's vendor simulator, in bf16 on the CPU host, with
null vendor kernels instead of null ops (``ascend_sim_null``): the plugin's glue stays in the step. A third timing,
``vendor``, replays the vendor-kernel calls of one step alone; ``direct`` minus ``vendor`` is the Ascend plugin's
own host cost. Vendor-kernel calls (torch_npu / ATB kernels and the aclnn matmul of ``linear``) are counted per
step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPE = {"hidden": 4096, "heads": 32, "kv_heads": 8, "head_dim": 128, "inter": 14336}


def _plugin(device: str) -> Any:
    """The backend's declaration, its op table active (no LMDeploy device patches: none exist on a real device)."""
    from dlinfer import dispatch

    return dispatch.activate("reference" if device == "cpu" else "maca")


def _tensors(device: str) -> tuple[str, torch.dtype]:
    """Where the step's tensors live and their dtype (the Ascend kernels take half precision only)."""
    if device == "ascend-sim":
        return "cpu", torch.bfloat16
    return device, torch.float32 if device == "cpu" else torch.bfloat16


class Step:
    """One decode step's adaptor calls for ``layers`` Llama layers at batch 1."""

    def __init__(self, layers: int, device: str, plugin: Any, real_weights: bool) -> None:
        from lmdeploy.messages import QuantPolicy

        from dlinfer_lmdeploy.impls import attention, dense

        H, Hq, Hkv, D, inter = (SHAPE[k] for k in ("hidden", "heads", "kv_heads", "head_dim", "inter"))
        device, dt = _tensors(device)
        self.layers, self.plugin, self.dims = layers, plugin, (H, Hq, Hkv, D, inter)
        self.attn = attention.DlinferPagedAttentionImpl(num_heads=Hq, head_size=D, scale=D**-0.5, num_kv_heads=Hkv,
                                                        v_head_size=D)
        self.rot = dense.DlinferApplyRotaryEmbImpl()
        self.norm = dense.DlinferRMSNormImpl(H, 1e-5)
        self.lin = dense.DlinferLinearImpl()
        self.act = dense.DlinferSiluAndMulImpl()
        blocks, bs = 8, 64

        def mk(*s: int) -> torch.Tensor:  # null kernels read shapes only: weights without storage
            if real_weights or len(s) == 1:
                return torch.randn(*s, device=device, dtype=dt) * 0.02
            return torch.zeros((), device=device, dtype=dt).expand(*s)

        self.w = [{"ln1": mk(H), "qkv": mk((Hq + 2 * Hkv) * D, H), "o": mk(H, Hq * D), "ln2": mk(H),
                   "gu": mk(2 * inter, H), "down": mk(H, inter)} for _ in range(layers)]
        shape = plugin.kv_block_shape(bs, Hkv, D)
        self.caches = [(torch.zeros(blocks, *shape, device=device, dtype=dt),
                        torch.zeros(blocks, *shape, device=device, dtype=dt)) for _ in range(layers)]
        self.x = torch.randn(1, H, device=device, dtype=dt)
        self.cos, self.sin = torch.randn(1, D, device=device, dtype=dt), torch.randn(1, D, device=device, dtype=dt)
        self.sections = (Hq * D, Hkv * D, Hkv * D)
        q = torch.tensor([1], device=device)
        self.ctx = SimpleNamespace(
            kv_caches=self.caches, q_seqlens=q, kv_seqlens=torch.tensor([300], device=device, dtype=torch.int32),
            q_start_loc=torch.zeros(1, dtype=torch.long, device=device),
            block_offsets=torch.arange(blocks, device=device)[None], input_ids=torch.zeros(1, 1, dtype=torch.long),
            is_decoding=True, max_q_seqlen=1, max_kv_seqlen=300, sum_kv_seqlen=300,
            kv_quant_policy=QuantPolicy.NONE)

    def adaptor(self) -> None:
        """The step through the adaptor (what LMDeploy calls)."""
        from dlinfer_lmdeploy import metadata

        H, Hq, Hkv, D, _ = self.dims
        md = metadata.build(self.ctx, self.plugin).finalize()  # as the eager runner does before the forward
        x, residual = self.x, None
        for w, (kc, vc) in zip(self.w, self.caches, strict=True):
            if residual is None:
                residual, h = x, self.norm.forward(x, w["ln1"])
            else:
                h, residual = self.norm.forward(x, w["ln1"], residual)
            qkv = self.lin.forward(h, w["qkv"])
            q, k, v = qkv.split(self.sections, dim=-1)  # LMDeploy's split_qkv
            q, k, v = q.unflatten(-1, (Hq, D)), k.unflatten(-1, (Hkv, D)), v.unflatten(-1, (Hkv, D))
            q, k = self.rot.forward(q, k, self.cos, self.sin, inplace=True)
            o = self.attn.forward(q, k, v, kc, vc, md, inplace=True)
            h = self.lin.forward(o.reshape(1, -1), w["o"])
            h, residual = self.norm.forward(h, w["ln2"], residual)
            x = self.lin.forward(self.act.forward(self.lin.forward(h, w["gu"])), w["down"])

    def direct(self) -> None:
        """The same kernels called from the dispatch table with the views the Impls would pass (the floor)."""
        from dlinfer.dispatch import TABLE

        H, Hq, Hkv, D, _ = self.dims
        md = self.md
        x, residual = self.x, None
        for w, (kc, vc) in zip(self.w, self.caches, strict=True):
            if residual is None:
                residual, h = x, TABLE.rms_norm(x, w["ln1"], eps=1e-5)
            else:
                h, residual = TABLE.add_rms_norm(x, residual, w["ln1"], eps=1e-5)
            qkv = TABLE.linear(h, w["qkv"], None)
            q, k, v = qkv.split(self.sections, dim=-1)
            q, k, v = q.unflatten(-1, (Hq, D)), k.unflatten(-1, (Hkv, D)), v.unflatten(-1, (Hkv, D))
            TABLE.apply_rotary_pos_emb_inplace(q, k, self.cos, self.sin, interleaved=False)
            TABLE.fill_kv_cache(k, v, kc, vc, md.slot_mapping, kv_layout=md.kv_layout)
            o = TABLE.paged_decode_attention(q, kc, vc, md.block_offsets, md.kv_seqlens, max_seqlen_kv=md.max_kv_seqlen,
                                             scale=D**-0.5, window=None, softcap=None, alibi_slopes=None,
                                             kv_layout=md.kv_layout, seqlens_kv_cpu=md.seqlens_kv_cpu, plan=md.plan)
            h = TABLE.linear(o.reshape(1, -1), w["o"], None)
            h, residual = TABLE.add_rms_norm(h, residual, w["ln2"], eps=1e-5)
            x = TABLE.linear(TABLE.silu_and_mul(TABLE.linear(h, w["gu"], None)), w["down"], None)

    def prepare_direct(self) -> None:
        from dlinfer_lmdeploy import metadata

        self.md = metadata.build(self.ctx, self.plugin).finalize()


def _time(fns: dict[str, Callable[[], None]], steps: int, repeats: int, sync: Callable[[], None]) -> dict[str, Any]:
    """Host microseconds per step of each function, wall and this thread's CPU time (less sensitive to a shared,
    busy host), timed in turn within every repeat so that a slow spell hits all alike: min and median over repeats,
    and the median of the per-repeat differences to the last function."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    sync()
    per: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.thread_time()
            for _ in range(steps):
                fn()
            per[name]["cpu"].append((time.thread_time() - c0) / steps * 1e6)
            per[name]["wall"].append((time.perf_counter() - t0) / steps * 1e6)  # host only: the device drains untimed
            sync()
    base = list(fns)[-1]
    med = statistics.median
    return {name: {f"{k}_{stat}_us": round(val, 1) for k, v in clocks.items() for stat, val in (
                ("min", min(v)), ("median", med(v)),
                ("median_diff", med(a - b for a, b in zip(v, per[base][k], strict=True))))}
            for name, clocks in per.items()}


def count_aten(fn: Callable[[], None]) -> dict[str, Any]:
    """Aten ops of one call of ``fn`` by the innermost dlinfer / bench frame that issued them."""
    from torch.utils._python_dispatch import TorchDispatchMode

    where: Counter[str] = Counter()
    ops: Counter[str] = Counter()

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            f = sys._getframe(1)
            while f is not None and ("/torch/" in f.f_code.co_filename or "contextlib" in f.f_code.co_filename):
                f = f.f_back
            name = "?" if f is None else f"{Path(f.f_code.co_filename).name}:{f.f_code.co_name}"
            where[name] += 1
            ops[f"{name} {func.overloadpacket}"] += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return {"total": sum(where.values()), "by_frame": dict(where.most_common()), "by_op": dict(ops.most_common())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--device", default="cpu",
                        help="cpu (reference backend), cuda (maca backend) or ascend-sim (Ascend plugin, simulator)")
    parser.add_argument("--kernels", choices=("null", "active"), default="null",
                        help="null: empty results (ascend-sim: null vendor kernels, the plugin's glue kept)")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per timing (default 20; 1 with real kernels on a GPU, so that the launch queue "
                             "never fills and blocks the host)")
    parser.add_argument("--repeats", type=int, default=None, help="timings (default 15; 60 with --steps 1)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    ascend = args.device == "ascend-sim"
    if ascend and args.kernels != "null":
        parser.error("--device ascend-sim runs null vendor kernels only (the simulator's kernels are not timed)")
    if args.steps is None:
        args.steps = 1 if (args.device not in ("cpu", "ascend-sim") and args.kernels == "active") else 20
    if args.repeats is None:
        args.repeats = 60 if args.steps == 1 else 15
    on_host = _tensors(args.device)[0] == "cpu"
    if on_host:
        torch.set_num_threads(1)
    recorder = None
    if ascend:
        from ascend_sim_null import activate

        plugin, recorder = activate()
    else:
        plugin = _plugin(args.device)
        if args.kernels == "null":
            from profile_batch1 import null_kernels

            null_kernels()
    step = Step(args.layers, args.device, plugin, real_weights=args.kernels == "active")
    step.prepare_direct()
    sync = torch.cuda.synchronize if not on_host else (lambda: None)
    res: dict[str, Any] = {"layers": args.layers, "device": args.device, "kernels": args.kernels, "shape": SHAPE,
                           "backend": plugin.name}
    fns: dict[str, Callable[[], None]] = {"adaptor": step.adaptor, "direct": step.direct}
    if recorder is not None:
        step.direct()  # first calls run the simulator once per shape
        recorder.count, recorder.calls = 0, []
        step.direct()
        calls, recorder.calls = recorder.calls, None
        recorder.count = 0
        step.adaptor()
        res["vendor_calls_per_step"] = {"adaptor": recorder.count, "direct": len(calls)}
        res["vendor_calls_by_kernel"] = dict(Counter(fn.name for fn, _, _ in calls).most_common())
        recorder.replayed = calls
        fns = {"vendor": recorder.replay, **fns}  # the differences are taken to the last one, "direct"
    timed = _time(fns, args.steps, args.repeats, sync)
    res["adaptor_step"], res["direct_step"] = timed["adaptor"], timed["direct"]
    if recorder is not None:
        res["vendor_step"] = timed["vendor"]
        res["plugin_overhead_us_per_layer"] = round(-timed["vendor"]["cpu_median_diff_us"] / args.layers, 2)
    res["adaptor_overhead_us_per_step"] = res["adaptor_step"]["cpu_median_diff_us"]
    res["adaptor_overhead_us_per_layer"] = round(res["adaptor_overhead_us_per_step"] / args.layers, 2)
    res["aten_adaptor_step"] = count_aten(step.adaptor)
    res["aten_direct_step"] = count_aten(step.direct)
    a, d = res["aten_adaptor_step"]["total"], res["aten_direct_step"]["total"]
    print(f"{args.layers} layers, {args.device}, kernels {args.kernels} ({plugin.name}): adaptor step "
          f"{res['adaptor_step']} us, direct {res['direct_step']} us -> adaptor overhead "
          f"{res['adaptor_overhead_us_per_step']} us/step ({res['adaptor_overhead_us_per_layer']} us/layer); "
          f"aten ops per step {a} vs {d} direct ({a - d} from the adaptor)")
    if recorder is not None:
        print(f"vendor-kernel calls per step: {res['vendor_calls_per_step']} {res['vendor_calls_by_kernel']}; "
              f"vendor calls alone {res['vendor_step']} us -> Ascend plugin host cost "
              f"{res['plugin_overhead_us_per_layer']} us/layer (direct - vendor, CPU time)")
    for frame, n in res["aten_adaptor_step"]["by_op"].items():
        print(f"  {n:6d}  {frame}")
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
