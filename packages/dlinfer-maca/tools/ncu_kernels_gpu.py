"""Hardware counters of the kernels behind issue 13's open per-op gaps, ours beside LMDeploy's (Nsight Compute).

    python3 packages/dlinfer-maca/tools/ncu_kernels_gpu.py --out DIR [--cases w4_m1,w4_m128,decode_b1]

Without ``--child`` it starts itself under ``ncu`` (``--profile-from-start off --clock-control none --cache-control
all``: every profiled pass starts with cold caches, so weights come from DRAM) and prints one row per kernel: time,
DRAM bytes and throughput, SM and issue utilisation, achieved occupancy, registers, grid, and the three largest warp
stall reasons (cycles per issued instruction). In the child each case runs three times unprofiled (compilation,
autotuning), then once between ``cudaProfilerStart`` / ``cudaProfilerStop`` behind a marker kernel that separates
the cases in the report. Outputs: ``ncu.ncu-rep``, ``ncu-raw.csv`` and ``ncu-summary.json`` in ``--out``.

Cases (bf16/fp16 as the op benchmarks use them; random inputs):
  w4_m1 / w4_m1_t / w4_m16 / w4_m64 / w4_m128: W4A16 at M 1 (4096x14336 and 14336x4096), 16, 64 and 128 rows:
      our default path, LMDeploy's ``awq_linear``, and cuBLAS on the dequantised fp16 weight (the bandwidth
      reference: 4x the bytes);
  w4_m1_var: the CUDA-core kernel's deeper prefetch, fold, pipelined and column-thread variants at M 1 (4096x14336);
  w4_m64_var / w4_m128_var: folded-scale (join 2) tiles at M 64, and LMDeploy's K step and a wider tile at M 128;
  decode_b1: paged decode, batch 1 at 1k and 8k context (32/8 heads, d 128, block 64, bf16), ours and LMDeploy's.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SECTIONS = ("SpeedOfLight", "Occupancy", "LaunchStats", "WarpStateStats", "MemoryWorkloadAnalysis", "SchedulerStats")
METRICS = {  # summary column -> raw metric name in ncu's CSV
    "us": "gpu__time_duration.sum",
    "dram_GBps": "dram__bytes.sum.per_second",
    "dram_pct": "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed",
    "sm_pct": "sm__throughput.avg.pct_of_peak_sustained_elapsed",
    "issue_pct": "smsp__issue_active.avg.pct_of_peak_sustained_active",
    "occupancy_pct": "sm__warps_active.avg.pct_of_peak_sustained_active",
    "regs": "launch__registers_per_thread",
    "grid": "launch__grid_size",
    "block": "launch__block_size",
    "cycles_per_issue": "smsp__average_warp_latency_per_inst_issued.ratio",
    "warp_inst": "inst_executed",
    "inst_pct": "sm__inst_executed.sum.pct_of_peak_sustained_elapsed",
}
CASES = ("w4_m1", "w4_m1_t", "w4_m16", "w4_m64", "w4_m128", "w4_m1_var", "w4_m64_var", "w4_m128_var", "decode_b1")
"""The cases :func:`build_cases` knows (module docstring)."""
STALL_PREFIX = "smsp__average_warps_issue_stalled_"
STALL_SUFFIX = "_per_issue_active.ratio"
MARKER = "_ncu_case_marker"


def find_ncu() -> str | None:
    found = shutil.which("ncu")
    if found:
        return found
    hits = sorted(glob.glob("/opt/nvidia/nsight-compute/*/ncu") + glob.glob("/usr/local/cuda*/bin/ncu"))
    return hits[-1] if hits else None


# ------------------------------------------------------------------------------------------------ child: the cases


def build_cases(names: list[str]) -> list[tuple[str, Callable[[], Any]]]:
    import torch
    import triton
    import triton.language as tl

    from dlinfer_maca.kernels import quant
    from dlinfer_maca.kernels.attention import paged_decode_fwd
    from dlinfer_maca.kernels.configs import W4A16_DECODE_GEMV, GemmConfig

    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    try:
        from lmdeploy.pytorch.kernels.cuda.awq_kernels import awq_linear
    except Exception as exc:  # noqa: BLE001
        print(f"LMDeploy awq_linear not importable ({type(exc).__name__}); its W4A16 rows are skipped")
        awq_linear = None
    try:
        from lmdeploy.pytorch.kernels.cuda import flash_attn_with_kvcache
    except Exception as exc:  # noqa: BLE001
        print(f"LMDeploy flash_attn_with_kvcache not importable ({type(exc).__name__}); its decode row is skipped")
        flash_attn_with_kvcache = None

    def awq_pack(q: torch.Tensor) -> torch.Tensor:
        r, c = q.shape
        cols = q.view(r, c // 8, 8).long()
        packed = torch.zeros(r, c // 8, dtype=torch.int64, device=dev)
        for i, col in enumerate(quant.AWQ_ORDER):
            packed |= cols[..., col] << (4 * i)
        return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)

    def w4_rows(tag: str, M: int, K: int, N: int, variants: dict[str, Any] | None = None) -> list:
        g = 128
        q = torch.randint(0, 16, (K, N), device=dev, dtype=torch.int32, generator=gen)
        z = torch.randint(0, 16, (K // g, N), device=dev, dtype=torch.int32, generator=gen)
        s = (torch.rand(K // g, N, device=dev, generator=gen) * 0.02 + 0.005).half()
        qw, qz = awq_pack(q), awq_pack(z)
        pw, ps, pz = quant.awq_prepare(qw, s, qz, g)
        w16 = ((q - z.repeat_interleave(g, 0)).half() * s.repeat_interleave(g, 0))
        x = torch.randn(M, K, device=dev, generator=gen).half()
        shape = f"M{M} {K}x{N}"
        rows = []
        if variants:
            rows += [(f"{tag} ours {name} {shape}", (lambda c=cfg: quant.w4a16_fwd(x, pw, ps, pz, None, g, config=c)))
                     for name, cfg in variants.items()]
        else:
            rows.append((f"{tag} ours default {shape}", lambda: quant.w4a16_fwd(x, pw, ps, pz, None, g)))
            if awq_linear is not None:
                rows.append((f"{tag} lmdeploy awq_linear {shape}", lambda: awq_linear(x, qw, s, qz)))
            rows.append((f"{tag} cuBLAS fp16 dequantised {shape}", lambda: torch.mm(x, w16)))
        return rows

    def decode_rows(B: int, ctx: int) -> list:
        hq, hkv, d, bs = 32, 8, 128, 64
        nblk = -(-ctx // bs)
        kc = torch.randn(B * nblk, bs, hkv, d, device=dev, dtype=torch.bfloat16, generator=gen)
        vc = torch.randn(B * nblk, bs, hkv, d, device=dev, dtype=torch.bfloat16, generator=gen)
        bt = torch.randperm(B * nblk, device=dev, generator=gen).to(torch.int32).view(B, nblk).contiguous()
        lens = torch.full((B,), ctx, dtype=torch.int32, device=dev)
        q = torch.randn(B, hq, d, device=dev, dtype=torch.bfloat16, generator=gen)
        shape = f"B{B} ctx{ctx}"
        rows = [(f"decode ours {shape}", lambda: paged_decode_fwd(q, kc, vc, bt, lens, ctx, "NHD"))]
        if flash_attn_with_kvcache is not None:
            rows.append((f"decode lmdeploy {shape}",
                         lambda: flash_attn_with_kvcache(q, kc, vc, lens, bt, max_seqlen_q=1)))
        return rows

    gv = W4A16_DECODE_GEMV
    table: dict[str, Callable[[], list]] = {
        "w4_m1": lambda: w4_rows("w4", 1, 4096, 14336),
        "w4_m1_t": lambda: w4_rows("w4", 1, 14336, 4096),
        "w4_m16": lambda: w4_rows("w4", 16, 4096, 14336),
        "w4_m64": lambda: w4_rows("w4", 64, 4096, 14336),
        "w4_m128": lambda: w4_rows("w4", 128, 4096, 14336),
        "w4_m64_var": lambda: w4_rows("w4", 64, 4096, 14336, {  # the scale folded into the weights (join 2)
            "64x128x128-join2": GemmConfig(64, 128, 128, 4, 2, 0, 1, 2, 8, 2, even_k=True),
            "64x128x64-join2": GemmConfig(64, 128, 64, 4, 3, 0, 1, 2, 8, 2, even_k=True)}),
        "w4_m128_var": lambda: w4_rows("w4", 128, 4096, 14336, {  # LMDeploy's K step, wider tiles
            "128x128x128-join2": GemmConfig(128, 128, 128, 4, 2, 0, 1, 2, 8, 2, even_k=True),
            "128x256x64-w8-join2": GemmConfig(128, 256, 64, 8, 3, 0, 1, 2, 8, 2, even_k=True)}),
        "w4_m1_var": lambda: w4_rows("w4", 1, 4096, 14336, {
            "stages3": gv._replace(num_stages=3), "stages4": gv._replace(num_stages=4),
            "bk64-fold2": gv._replace(block_k=64, fold=2), "bk128-fold4": gv._replace(block_k=128, fold=4),
            "split8": gv._replace(split_k=8), "bn256-w8": gv._replace(block_n=256, num_warps=8),
            "pipelined4": gv._replace(num_stages=4, pipelined=True),
            "pipelined6": gv._replace(num_stages=6, pipelined=True),
            "columns-split8": gv._replace(num_stages=1, split_k=8, column_threads=True),
            "columns-split16": gv._replace(num_stages=1, split_k=16, column_threads=True),
            "columns-split16-3stages": gv._replace(num_stages=3, split_k=16, column_threads=True)}),
        "decode_b1": lambda: decode_rows(1, 1024) + decode_rows(1, 8192),
    }
    assert set(table) == set(CASES), "CASES and the case table disagree"

    @triton.jit
    def _ncu_case_marker(p):
        tl.store(p, 1)

    flag = torch.zeros(1, device=dev, dtype=torch.int32)
    marker = lambda: _ncu_case_marker[(1,)](flag)  # noqa: E731
    cases = [row for n in names for row in table[n]()]
    return [("marker", marker)] + cases


def child(names: list[str], out: Path) -> int:
    import torch

    cases = build_cases(names)
    marker = cases[0][1]
    cases = cases[1:]
    for _, fn in cases:  # compile, autotune, allocate outside the profiled ranges
        for _ in range(3):
            fn()
    marker()
    torch.cuda.synchronize()
    cudart = torch.cuda.cudart()
    for _, fn in cases:
        cudart.cudaProfilerStart()
        marker()
        fn()
        torch.cuda.synchronize()
        cudart.cudaProfilerStop()
    (out / "ncu-cases.json").write_text(json.dumps([name for name, _ in cases]))
    return 0


# ------------------------------------------------------------------------------------------------ parent: ncu


def _num(v: str) -> float | None:
    try:
        return float(v.replace(",", ""))
    except (ValueError, AttributeError):
        return None


def summarise(raw_csv: Path, case_names: list[str]) -> list[dict[str, Any]]:
    """One dict per profiled kernel (markers dropped), labelled with the case whose marker precedes it."""
    with open(raw_csv, newline="") as f:
        rows = list(csv.reader(f))
    header_i = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
    header, units, body = rows[header_i], rows[header_i + 1], rows[header_i + 2:]
    col = {name: i for i, name in enumerate(header)}
    out: list[dict[str, Any]] = []
    case_i = -1
    for r in body:
        if len(r) != len(header):
            continue
        name = r[col["Kernel Name"]]
        if MARKER in name:
            case_i += 1
            continue
        rec: dict[str, Any] = {"case": case_names[case_i] if 0 <= case_i < len(case_names) else "?",
                               "kernel": name[:60]}
        for key, metric in METRICS.items():
            if metric in col:
                v = _num(r[col[metric]])
                unit = units[col[metric]]
                if v is not None and key == "us":
                    v = v / 1e3 if unit in ("nsecond", "ns") else v * 1e3 if unit in ("msecond", "ms") else v
                if v is not None and key == "dram_GBps":
                    v = v * {"byte/s": 1e-9, "Kbyte/s": 1e-6, "Mbyte/s": 1e-3, "Gbyte/s": 1.0,
                             "Tbyte/s": 1e3}.get(unit, 1.0)
                rec[key] = v
        if rec.get("us") is not None and rec.get("dram_GBps") is not None:
            rec["dram_MB"] = rec["dram_GBps"] * rec["us"] * 1e-3
        stalls = {h[len(STALL_PREFIX):-len(STALL_SUFFIX)]: _num(r[i]) for h, i in col.items()
                  if h.startswith(STALL_PREFIX) and h.endswith(STALL_SUFFIX) and "not_issued" not in h}
        rec["stalls"] = dict(sorted(((k, v) for k, v in stalls.items() if v), key=lambda kv: -kv[1])[:4])
        out.append(rec)
    return out


def print_table(recs: list[dict[str, Any]]) -> None:
    print("| case | kernel | µs | DRAM MB | DRAM % | SM % | issue % | occupancy % | regs | grid x block | "
          "cycles / issue | warp instructions M (% of peak rate) | largest stalls (cycles / issue) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")

    def f(v: Any, nd: int = 1) -> str:
        return "–" if v is None else f"{v:.{nd}f}"

    for r in recs:
        stalls = ", ".join(f"{k} {v:.1f}" for k, v in r["stalls"].items())
        print(f"| {r['case']} | `{r['kernel']}` | {f(r.get('us'))} | {f(r.get('dram_MB'))} | {f(r.get('dram_pct'))} | "
              f"{f(r.get('sm_pct'))} | {f(r.get('issue_pct'))} | {f(r.get('occupancy_pct'))} | "
              f"{f(r.get('regs'), 0)} | {f(r.get('grid'), 0)} x {f(r.get('block'), 0)} | "
              f"{f(r.get('cycles_per_issue'))} | "
              f"{f(r['warp_inst'] / 1e6 if r.get('warp_inst') is not None else None, 2)} ({f(r.get('inst_pct'))}) | "
              f"{stalls} |")


def check_cases(cases: str) -> list[str]:
    """The comma-separated ``--cases`` as a list; an unknown name is an error naming the known ones."""
    names = [n for n in cases.split(",") if n]
    unknown = [n for n in names if n not in CASES]
    if unknown or not names:
        raise SystemExit(f"ncu_kernels_gpu: --cases expects names from {list(CASES)}; got {cases!r}")
    return names


def parent(args: argparse.Namespace) -> int:
    check_cases(args.cases)
    ncu = find_ncu()
    if ncu is None:
        print("ncu_kernels_gpu: no ncu on PATH or under /opt/nvidia/nsight-compute")
        return 2
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    rep = out / "ncu"
    cmd = [ncu, "--profile-from-start", "off", "--clock-control", "none", "--cache-control", "all", "-f", "-o",
           str(rep)]
    for s in SECTIONS:
        cmd += ["--section", s]
    cmd += [sys.executable, os.path.abspath(__file__), "--child", "--cases", args.cases, "--out", str(out)]
    print(" ".join(cmd), flush=True)
    proc = subprocess.run(cmd, timeout=args.timeout)
    if proc.returncode != 0:
        print(f"ncu_kernels_gpu: the profiled run exited {proc.returncode}")
        return proc.returncode
    raw = out / "ncu-raw.csv"
    with open(raw, "w") as f:
        subprocess.run([ncu, "-i", f"{rep}.ncu-rep", "--csv", "--page", "raw"], stdout=f, check=True)
    recs = summarise(raw, json.loads((out / "ncu-cases.json").read_text()))
    (out / "ncu-summary.json").write_text(json.dumps(recs, indent=1))
    print_table(recs)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    ap.add_argument("--cases", default="w4_m1,w4_m1_t,w4_m16,w4_m128,w4_m1_var,decode_b1")
    ap.add_argument("--timeout", type=int, default=400)
    ap.add_argument("--summarise", action="store_true",
                    help="print the table again from --out's ncu-raw.csv and ncu-cases.json (no GPU)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.summarise:
        print_table(summarise(args.out / "ncu-raw.csv", json.loads((args.out / "ncu-cases.json").read_text())))
        return 0
    if args.child:
        return child(check_cases(args.cases), args.out)
    return parent(args)


if __name__ == "__main__":
    raise SystemExit(main())
