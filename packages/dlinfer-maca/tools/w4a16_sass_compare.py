"""Static profile of the W4A16 kernels for sm_90, compiled on any host (no GPU: Triton's bundled ptxas, nvdisasm and
cuobjdump): registers, spill stack, and the SASS instruction mix of maca's fused kernels at the table's configs
against LMDeploy's ``awq_linear_kernel`` at the tile it picks for the same rows.

    python packages/dlinfer-maca/tools/w4a16_sass_compare.py [--out DIR]   (LMDeploy importable for the peer rows)

Counts are static: ``sass`` is the whole binary, ``loop`` and the opcode columns the body of its largest loop (the
K loop, once). They show where a kernel spends instructions per K step (nibble unpack: SHF/LOP3/PRMT; address and
mask arithmetic: IMAD/LEA/ISETP; spill reloads: LDL; MMA: HGMMA/HMMA), not time.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU target, not the interpreter

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
MAC_ARGS = ["x_ptr", "qw_ptr", "s_ptr", "z_ptr", "bias_ptr", "o_ptr", "ws_ptr", "cnt_ptr", "M", "N", "K", "NW",
            "GROUP", "K_PER_SPLIT", "n_split", "stride_xm", "stride_qk", "stride_sk", "stride_zk", "stride_om"]
MAC_TYPES = ["*fp16", "*i32", "*fp16", "*i32", "*fp16", "*fp16", "*fp32", "*i32"] + ["i32"] * 12
SHOWN = ("HGMMA", "HMMA", "SHF", "LOP3", "PRMT", "HADD2", "HMUL2", "HFMA2", "FADD", "FFMA", "IMAD", "LEA", "ISETP",
         "LDL", "STL", "LDG", "LDGSTS", "STS", "LDS")
GEMV_ARGS = ["x_ptr", "qw_ptr", "s_ptr", "z_ptr", "bias_ptr", "o_ptr", "ws_ptr", "cnt_ptr", "M", "N", "NW",
             "K_PER_SPLIT", "K", "n_split", "stride_xm", "stride_qk", "stride_sk", "stride_zk", "stride_om"]
GEMV_TYPES = ["*fp16", "*i32", "*fp16", "*i32", "*fp16", "*fp16", "*fp32", "*i32"] + ["i32"] * 11
GEMV_CONFIGS = ((128, 32, 4, 2, 1, False), (128, 64, 8, 2, 1, False), (256, 32, 8, 2, 1, False),
                (128, 32, 4, 3, 1, False), (128, 32, 4, 4, 1, False), (128, 64, 4, 2, 2, False),
                (128, 128, 4, 2, 4, False), (128, 64, 4, 3, 2, False), (128, 32, 4, 3, 1, True),
                (128, 32, 4, 4, 1, True), (128, 32, 4, 6, 1, True), (128, 64, 4, 4, 2, True))
"""(BLOCK_N, BLOCK_K, num_warps, num_stages, fold, pipelined) of the CUDA-core kernel's rows (``--gemv``), group 128;
num_stages is the kernel's ``STAGES`` (weight tiles in flight: by hand, or Triton's pipeline stages when pipelined),
fold its ``FOLD`` (K-step rows summed per accumulator row)."""
SPECIALISED = True
"""Compile as a launch at the 8B shapes does: pointers and integer arguments marked divisible by 16."""
SPLIT_BUILD = False
"""maca's table rows built as a split-K launch runs them (``SPLIT``, in-kernel ``REDUCE``), not unsplit."""

# sm_90 (H100 / H200) per-SM limits, CUDA C++ Programming Guide, "Technical Specifications per Compute Capability"
# (compute capability 9.0): 64 K 32-bit registers, 228 KB shared memory, 64 resident warps, 32 resident blocks;
# registers are allocated per warp in units of 256 (the CUDA Occupancy Calculator's allocation granularity), and
# 1 KB of shared memory per block is reserved for the system (Hopper Tuning Guide, "Unified Shared Memory/L1").
SM90_REGISTERS, SM90_SHARED_BYTES, SM90_WARPS, SM90_BLOCKS = 65536, 228 * 1024, 64, 32


def programs_per_sm_sm90(registers: int, shared_bytes: int, warps: int) -> int:
    """Programs (thread blocks) of a build that fit one sm_90 SM at once: the least of the register, shared
    memory, warp and block limits."""
    per_warp = -(-registers * 32 // 256) * 256
    by_registers = (SM90_REGISTERS // per_warp) // warps if per_warp else SM90_BLOCKS
    by_shared = SM90_SHARED_BYTES // (shared_bytes + 1024)
    return min(by_registers, by_shared, SM90_WARPS // warps, SM90_BLOCKS)


def _compile(fn: Any, signature: dict[str, str], constexprs: dict[str, Any], warps: int, stages: int,
             divisible: tuple[str, ...] = ()) -> Any:
    """sm_90 build. ``divisible``: arguments marked divisible by 16, as a launch marks a pointer or an integer
    (not in ``do_not_specialize``) whose value is; without it the masks and vector widths are the worst case."""
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in divisible}
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=TARGET,
                          options={"num_warps": warps, "num_stages": stages})


def _launch_divisible(names: list[str], types: list[str], skip: tuple[str, ...] = ("M", "n_split")) -> tuple[str, ...]:
    """Every pointer and integer argument but ``skip`` (``do_not_specialize``, or M of odd row counts): at the 8B
    shapes (IN 4096 / 14336, OUT 4096-28672, group 128) each of them is a multiple of 16 in a real launch."""
    return tuple(n for n, t in zip(names, types, strict=True) if n not in skip)


def _loop_body(sass: str) -> list[str]:
    """Opcodes of the largest backward-branch range (the K loop's body; the whole kernel if there is none)."""
    ops: list[str] = []
    labels: dict[str, int] = {}
    best: tuple[int, int] | None = None
    for line in sass.splitlines():
        label = re.match(r"^\.(L_x_\d+):", line.strip())
        if label:
            labels[label.group(1)] = len(ops)
            continue
        found = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(.*)", line)
        if not found:
            continue
        ops.append(found.group(1))
        target = re.search(r"`\(\.(L_x_\d+)\)", found.group(2)) if found.group(1) == "BRA" else None
        if target and labels.get(target.group(1), len(ops)) < len(ops) - 1:
            span = (labels[target.group(1)], len(ops))
            if best is None or span[1] - span[0] > best[1] - best[0]:
                best = span
    return ops[best[0]:best[1]] if best else ops


def profile(kernel: Any, name: str, out: Path, shown: tuple[str, ...] = SHOWN) -> dict[str, Any]:
    """Registers, spill stack, shared memory, programs per SM, and the SASS opcode counts (whole binary, and
    ``shown`` in the largest loop's body) of one build; its cubin and SASS are written to ``out``."""
    cubin = out / f"{name}.cubin"
    cubin.write_bytes(kernel.asm["cubin"])
    sass = subprocess.run([str(TOOLS / "nvdisasm"), "-c", str(cubin)], capture_output=True, text=True,
                          check=True).stdout
    (out / f"{name}.sass").write_text(sass)
    usage = subprocess.run([str(TOOLS / "cuobjdump"), "--dump-resource-usage", str(cubin)], capture_output=True,
                           text=True, check=True).stdout
    ops: collections.Counter[str] = collections.Counter()
    for line in sass.splitlines():
        found = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", line)
        if found:
            ops[found.group(1)] += 1
    res = {k.lower(): int(v) for k, v in re.findall(r"(REG|STACK):(\d+)", usage)}
    loop = collections.Counter(_loop_body(sass))
    shared = int(kernel.metadata.shared)
    per_sm = programs_per_sm_sm90(res.get("reg", 0), shared, int(kernel.metadata.num_warps))
    return {"name": name, **res, "smem": shared, "per_sm": per_sm, "sass": sum(ops.values()),
            "loop": sum(loop.values()), **{op: loop.get(op, 0) for op in shown}}


def print_table(rows: list[dict[str, Any]], shown: tuple[str, ...], heading: str) -> None:
    """The rows as a Markdown table: resources, then the loop body's opcode counts."""
    cols = ["reg", "stack", "smem", "per_sm", "sass", "loop", *shown]
    print(heading)
    print("| kernel | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for r in rows:
        print(f"| {r['name']} | " + " | ".join(str(r.get(c, "")) for c in cols) + " |")


def maca_rows(out: Path, unpack: int | None, dtype: str, even_k: bool) -> list[dict[str, Any]]:
    from dlinfer_maca.kernels import configs, quant

    rows = []
    for m in (16, 64, 128):
        cfg = configs.pick_config(configs.W4A16_TABLE, m)
        if unpack is not None:
            cfg = cfg._replace(unpack=unpack)
        cfg = cfg._replace(even_k=cfg.even_k or even_k)
        const = dict(SPLIT=SPLIT_BUILD, REDUCE=cfg.reduce if SPLIT_BUILD else 0, HAS_BIAS=False, UNPACK=cfg.unpack,
                     BLOCK_M=cfg.block_m,
                     BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m, DOT_PREC="tf32")
        if cfg.join:
            fn, const = quant._w4a16_join_kernel, {**const, "FOLD": cfg.join == 2, "EVEN_K": cfg.even_k, "ASM": True}
        else:
            fn = quant._w4a16_kernel
        types = [t.replace("fp16", dtype) for t in MAC_TYPES]
        sig = dict(zip(MAC_ARGS, types, strict=True)) | {k: "constexpr" for k in const}
        name = (f"maca_m{m}_{cfg.block_m}x{cfg.block_n}x{cfg.block_k}_w{cfg.num_warps}s{cfg.num_stages}"
                f"_join{cfg.join}_unpack{cfg.unpack}{'_evenk' if cfg.even_k else ''}{'_split' if SPLIT_BUILD else ''}"
                f"_{dtype}")
        div = _launch_divisible(MAC_ARGS, types) if SPECIALISED else ()
        rows.append(profile(_compile(fn, sig, const, cfg.num_warps, cfg.num_stages, div), name, out))
    return rows


def gemv_rows(out: Path, dtype: str) -> list[dict[str, Any]]:
    """The CUDA-core kernel (``GemmConfig.gemv``) at a few tiles, split-K with the in-kernel reduction, group 128.
    Its FFMA count in the loop is one per weight a thread handles plus the per-group scaling."""
    from dlinfer_maca.kernels import quant

    rows = []
    for bn, bk, warps, stages, fold, pipelined in GEMV_CONFIGS:
        const = dict(SPLIT=True, REDUCE=1, HAS_BIAS=False, BLOCK_N=bn, BLOCK_K=bk, GROUP=128, ASM=True, STAGES=stages,
                     FOLD=fold, PIPELINED=pipelined)
        types = [t.replace("fp16", dtype) for t in GEMV_TYPES]
        sig = dict(zip(GEMV_ARGS, types, strict=True)) | {k: "constexpr" for k in const}
        name = (f"maca_gemv_{bn}x{bk}_w{warps}s{stages}{f'f{fold}' if fold > 1 else ''}{'p' if pipelined else ''}"
                f"_{dtype}")
        div = _launch_divisible(GEMV_ARGS, types) if SPECIALISED else ()
        rows.append(profile(_compile(quant._w4a16_gemv_kernel, sig, const, warps, stages, div), name, out))
    return rows


GEMV_COLUMN_CONFIGS = ((128, 32, 4, 1), (128, 64, 4, 1), (128, 32, 4, 3), (256, 32, 8, 1), (128, 64, 8, 1))
"""(BLOCK_N, BLOCK_K, num_warps, num_stages) of the column-thread CUDA-core kernel's rows (``--gemv``)."""


def gemv_column_rows(out: Path, dtype: str) -> list[dict[str, Any]]:
    """The column-thread CUDA-core kernel (``GemmConfig.column_threads``): one word per thread per pass."""
    from dlinfer_maca.kernels import quant

    rows = []
    names, types = GEMV_ARGS + ["WSTRIDE"], [t.replace("fp16", dtype) for t in GEMV_TYPES] + ["i32"]
    for bn, bk, warps, stages in GEMV_COLUMN_CONFIGS:
        cfg = quant.GemmConfig(1, bn, bk, warps, stages, gemv=True, column_threads=True)
        const = dict(SPLIT=True, REDUCE=1, HAS_BIAS=False, BLOCK_N=bn, BLOCK_K=bk, GROUP=128,
                     ROWS=quant.gemv_column_rows(cfg), ASM=True, STAGES=stages)
        sig = dict(zip(names, types, strict=True)) | {k: "constexpr" for k in const}
        div = _launch_divisible(names, types, skip=("M", "n_split", "WSTRIDE")) if SPECIALISED else ()
        kern = _compile(quant._w4a16_gemv_col_kernel, sig, const, warps, stages, div)
        rows.append(profile(kern, f"maca_gemvcol_{bn}x{bk}_w{warps}s{stages}_{dtype}", out))
    return rows


def lmdeploy_rows(out: Path) -> list[dict[str, Any]]:
    try:
        from lmdeploy.pytorch.kernels.cuda import awq_kernels
    except ImportError as exc:  # the peer is optional
        print(f"LMDeploy's awq_kernels not importable ({exc}): peer rows skipped", file=sys.stderr)
        return []
    names = ["a_ptr", "qw_ptr", "s_ptr", "qz_ptr", "c_ptr", "M", "N", "K", "stride_am", "stride_ak", "stride_wk",
             "stride_wn", "stride_sk", "stride_sn", "stride_zk", "stride_zn", "stride_cm", "stride_cn"]
    runtime = {"a_ptr": "*fp16", "qw_ptr": "*i32", "s_ptr": "*fp16", "qz_ptr": "*i32", "c_ptr": "*fp16",
               "M": "i32", "stride_am": "i32", "stride_cm": "i32"}
    n, k = 14336, 4096
    rows = []
    for m in (16, 64, 128):  # its launcher: BLOCK_M = next_power_of_2(M) in [16, 128], BLOCK_K = group size, 2 stages
        const = dict(N=n, K=k, stride_ak=1, stride_wk=n // 8, stride_wn=1, stride_sk=n, stride_sn=1,
                     stride_zk=n // 8, stride_zn=1, stride_cn=1, SPLIT_K=max(1, k // 4096), NUM_STAGES=2,
                     BLOCK_SIZE_M=m, BLOCK_SIZE_N=128, BLOCK_SIZE_K=128, GROUP_SIZE_M=8)
        sig = {name: runtime.get(name, "constexpr") for name in names} | {
            c: "constexpr" for c in ("SPLIT_K", "NUM_STAGES", "BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K",
                                     "GROUP_SIZE_M")}
        div = tuple(n for n in runtime if n != "M" or m % 16 == 0) if SPECIALISED else ()
        kern = _compile(awq_kernels.awq_linear_kernel.fn, sig, const, 4, 2, div)
        rows.append(profile(kern, f"lmdeploy_m{m}_{m}x128x128_w4s2", out))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="keep the cubin and SASS files here")
    parser.add_argument("--unpack", type=int, default=None, help="override the table's unpack for maca's rows")
    parser.add_argument("--dtype", choices=("fp16", "bf16"), default="fp16", help="maca's activation dtype")
    parser.add_argument("--no-peer", action="store_true", help="skip LMDeploy's kernel")
    parser.add_argument("--even-k", action="store_true", help="maca's rows with even_k (no per-element K mask)")
    parser.add_argument("--gemv", action="store_true", help="add rows of the CUDA-core kernel (GemmConfig.gemv)")
    parser.add_argument("--unspecialised", action="store_true",
                        help="no argument marked divisible by 16 (worst case; launches at the 8B shapes mark them)")
    parser.add_argument("--split", action="store_true",
                        help="maca's table rows as a split-K launch builds them (SPLIT, in-kernel REDUCE)")
    args = parser.parse_args()
    global SPECIALISED, SPLIT_BUILD  # noqa: PLW0603 - one switch for every row builder
    SPECIALISED = not args.unspecialised
    SPLIT_BUILD = args.split
    out = args.out or Path(tempfile.mkdtemp(prefix="w4a16-sass-"))
    out.mkdir(parents=True, exist_ok=True)
    rows = maca_rows(out, args.unpack, args.dtype, args.even_k)
    rows += gemv_rows(out, args.dtype) + gemv_column_rows(out, args.dtype) if args.gemv else []
    rows += [] if args.no_peer else lmdeploy_rows(out)
    print_table(rows, SHOWN, "Opcode columns count the K loop's body (static); per_sm: programs resident per sm_90 SM.")
    print(f"(cubin and SASS in {out})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
