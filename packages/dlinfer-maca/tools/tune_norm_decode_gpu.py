"""Sweep of launch settings for the per-token quantisers and paged decode on one GPU, against LMDeploy's kernels.

    python packages/dlinfer-maca/tools/tune_norm_decode_gpu.py [--only quant,decode] [--quick] [--out DIR]

Every candidate is timed as the median of CUDA-graph replays (``dlinfer_maca.bench.time_ms``), beside
LMDeploy's kernel on the same inputs (when importable) in the same process, and its output is compared with
the default launch's (quantisers: exact int8 codes and scales; decode: relative error against dense SDPA).
The numbers pick the launch heuristics in ``kernels/norm.py`` and ``kernels/attention.py``; the JSON
(``tune-norm-decode.json``) keeps every reading.
"""

# The timed closures are called inside the loop iteration that defines them.
# ruff: noqa: B023
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import types
from typing import Any

import torch
import torch.nn.functional as F

RESULTS: list[dict[str, Any]] = []


def _log(kind: str, shape: str, cells: dict[str, float], note: str = "") -> None:
    RESULTS.append({"kind": kind, "shape": shape, "us": cells, "note": note})
    best = min(cells, key=cells.__getitem__)
    body = " ".join(f"{k}:{v:.2f}" for k, v in cells.items())
    print(f"{kind:14} {shape:26} best {best} | {body} {note}", flush=True)


def sweep_quant(lmd: Any) -> None:
    from dlinfer_maca.bench import time_ms
    from dlinfer_maca.kernels import norm

    dev = torch.device("cuda")
    eps = 1e-6
    for H in (4096, 8192, 14336):
        for T in (1, 16, 64, 256, 1024, 4096, 16384):
            x = torch.randn(T, H, device=dev, dtype=torch.bfloat16)
            w = torch.randn(H, device=dev, dtype=torch.bfloat16)
            ref_q, ref_s = norm.dynamic_quant_fwd(x, num_warps=4)
            cells: dict[str, float] = {}
            for nw in (1, 2, 4, 8, 16):
                q, s = norm.dynamic_quant_fwd(x, num_warps=nw)
                ok = torch.equal(q, ref_q) and torch.equal(s, ref_s)
                cells[f"w{nw}"] = 1000 * time_ms(lambda: norm.dynamic_quant_fwd(x, num_warps=nw)) if ok else math.inf
            cells["default"] = 1000 * time_ms(lambda: norm.dynamic_quant_fwd(x))
            if lmd is not None:
                cells["lmdeploy"] = 1000 * time_ms(lambda: lmd.per_token_quant_int8(x, 1e-7))
            _log("dynamic_quant", f"T{T} H{H}", cells)
            if H == 14336:
                continue
            ref_q, ref_s = norm.rms_norm_fwd(x, w, eps, quant=True, num_warps=4)
            cells = {}
            for nw in (1, 2, 4, 8, 16):
                q, s = norm.rms_norm_fwd(x, w, eps, quant=True, num_warps=nw)
                ok = torch.equal(q, ref_q) and torch.equal(s, ref_s)
                cells[f"w{nw}"] = (1000 * time_ms(lambda: norm.rms_norm_fwd(x, w, eps, quant=True, num_warps=nw))
                                   if ok else math.inf)
            cells["default"] = 1000 * time_ms(lambda: norm.rms_norm_fwd(x, w, eps, quant=True))
            if lmd is not None:
                cells["lmdeploy"] = 1000 * time_ms(lambda: lmd.rms_norm_dynamic_quant(x, w, eps))
            _log("rms_norm_w8a8", f"T{T} H{H}", cells)


DECODE_SHAPES: tuple[tuple[int, int, int], ...] = tuple((b, c, c) for b, c in (
    (1, 256), (1, 320), (1, 384), (1, 512), (4, 512), (1, 1024), (1, 8192), (1, 32768), (8, 8192), (8, 32768),
    (32, 1024), (32, 8192), (32, 32768), (64, 4096), (64, 16384), (128, 2048), (128, 8192), (256, 1024),
    (256, 4096)))
"""(batch, context, max_seqlen_kv passed); ``--decode-shapes`` replaces them."""
SPLITS: tuple[int, ...] = ()
"""Fixed split counts to time (``--splits``); empty: the full list unless ``--quick``."""
VARIANTS: dict[str, dict[str, bool]] = {
    "page-loop": {"page_loop": True},
    "page-loop+no-pdl": {"page_loop": True, "merge_pdl": False},
    "no-pdl": {"merge_pdl": False},
}
"""Kernel options timed beside the default launch (``paged_decode_fwd`` keywords)."""


def _decode_shapes(text: str) -> tuple[tuple[int, int, int], ...]:
    """``"1x384@8192,64x4096"`` -> ((1, 384, 8192), (64, 4096, 4096)): batch x context [@ max_seqlen_kv]."""
    out = []
    for item in text.split(","):
        shape, _, cap = item.partition("@")
        b, c = (int(x) for x in shape.split("x"))
        out.append((b, c, int(cap) if cap else c))
    return tuple(out)


TUNES = ((64, 4, 3), (64, 4, 2), (64, 4, 4), (64, 8, 3), (32, 4, 3), (128, 8, 2), (128, 4, 2))


def sweep_decode(lmd: Any) -> None:
    from dlinfer_maca.bench import _dense_kv, _paged, rel_err, time_ms
    from dlinfer_maca.kernels._utils import num_sms
    from dlinfer_maca.kernels.attention import decode_num_splits, paged_decode_fwd

    dev = torch.device("cuda")
    holder = types.SimpleNamespace(dev=dev)
    hq, hkv, d, bs = 32, 8, 128, 64
    for B, ctx, cap in DECODE_SHAPES:
        p = _paged(holder, B, ctx, hkv, d, bs, torch.bfloat16)  # type: ignore[arg-type]
        q = torch.randn(B, hq, d, device=dev, dtype=torch.bfloat16)
        kd, vd = _dense_kv(p, B, ctx)
        ref = F.scaled_dot_product_attention(q[:, :, None], kd, vd, enable_gqa=True).squeeze(2)
        del kd, vd
        # cap: the max_seqlen_kv a CUDA graph is captured with (the split count follows it, each sequence's own
        # length is divided among the splits); the cache holds ctx keys per sequence either way
        args = (q, p["key_cache"], p["value_cache"], p["block_table"], p["seqlens_kv"], cap, "NHD")
        picked = decode_num_splits(B, hkv, cap, 64, num_sms(dev))
        nbytes = 2 * B * ctx * hkv * d * 2
        cells: dict[str, float] = {}
        worst = 0.0
        for sp in SPLITS or (() if QUICK else (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)):
            if sp > math.ceil(cap / 64) or B * hkv * sp > 64 * num_sms(dev):
                continue
            worst = max(worst, rel_err(paged_decode_fwd(*args, num_splits=sp), ref))
            cells[f"s{sp}"] = 1000 * time_ms(lambda: paged_decode_fwd(*args, num_splits=sp))
        best_sp = int(min(cells, key=cells.__getitem__)[1:]) if cells else picked
        for tune in () if QUICK else TUNES:
            worst = max(worst, rel_err(paged_decode_fwd(*args, num_splits=best_sp, tune=tune), ref))
            cells[f"s{best_sp}/bn{tune[0]}w{tune[1]}st{tune[2]}"] = 1000 * time_ms(
                lambda: paged_decode_fwd(*args, num_splits=best_sp, tune=tune))
        for merge_pass in (False, True):
            worst = max(worst, rel_err(paged_decode_fwd(*args, merge_pass=merge_pass), ref))
        cells["default"] = 1000 * time_ms(lambda: paged_decode_fwd(*args))
        cells["default/merge-pass"] = 1000 * time_ms(lambda: paged_decode_fwd(*args, merge_pass=True))
        worst = max(worst, rel_err(paged_decode_fwd(*args, heads_first=True), ref))
        cells["default/heads-first"] = 1000 * time_ms(lambda: paged_decode_fwd(*args, heads_first=True))
        for name, opts in VARIANTS.items():  # the kernel options against the default launch, same inputs
            worst = max(worst, rel_err(paged_decode_fwd(*args, **opts), ref))
            cells[f"default/{name}"] = 1000 * time_ms(lambda: paged_decode_fwd(*args, **opts))
        if lmd is not None:
            cells["lmdeploy"] = 1000 * time_ms(lambda: lmd.flash_attn_with_kvcache(
                q, p["key_cache"], p["value_cache"], p["seqlens_kv"], p["block_table"], max_seqlen_q=1))
        floor_us = nbytes / (COPY_GBS * 1e3) if COPY_GBS else float("nan")
        _log("decode", f"B{B} ctx{ctx}" + (f" cap{cap}" if cap != ctx else ""), cells,
             f"(heuristic {picked}; KV floor {floor_us:.1f}us; max rel err vs SDPA {worst:.1e})")
        torch.cuda.empty_cache()


COPY_GBS = 0.0
QUICK = False


def main() -> int:
    global COPY_GBS, QUICK, DECODE_SHAPES, SPLITS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="quant,decode")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--quick", action="store_true",
                    help="decode: only the shipped settings (in-kernel merge and merge pass) and LMDeploy's kernel")
    ap.add_argument("--decode-shapes", default="", help='decode cells, e.g. "1x384@8192,64x4096" (B x ctx [@ cap])')
    ap.add_argument("--splits", default="", help="decode: fixed split counts to time, e.g. 16,32,64")
    args = ap.parse_args()
    QUICK = args.quick
    if args.decode_shapes:
        DECODE_SHAPES = _decode_shapes(args.decode_shapes)
    if args.splits:
        SPLITS = tuple(int(x) for x in args.splits.split(","))
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    from dlinfer_maca.bench import _ceilings, _import_lmdeploy

    COPY_GBS = _ceilings(torch.device("cuda"))[0]
    lmd = _import_lmdeploy()
    groups = args.only.split(",")
    if "quant" in groups:
        sweep_quant(lmd)
    if "decode" in groups:
        sweep_decode(lmd)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "tune-norm-decode.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "copy_gbs": COPY_GBS, "rows": RESULTS}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
