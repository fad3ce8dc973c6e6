"""Static profile of the paged-decode split kernel for sm_90, compiled on any host (no GPU: Triton's bundled ptxas,
nvdisasm and cuobjdump): registers, shared memory, and the SASS instruction mix of the key loop's body, maca's
``_decode_split_kernel`` against LMDeploy's ``_fwd_grouped_split_kernel`` at the Llama-3-8B decode shape
(32 / 8 heads, d 128, page 64, bf16).

    python packages/dlinfer-maca/tools/decode_sass_compare.py [--out DIR] [--no-peer]

``loop`` counts the body of the largest backward branch once: one key block of 64 keys (both kernels step one block
per iteration). It shows where a block's instructions go (the two MMAs: HGMMA / HMMA; softmax: MUFU / FMUL / FADD /
FMNMX; masks: ISETP / SEL / FSEL; address arithmetic: IMAD / LEA / IADD3; loads: LDG / LDGSTS / LDS), not time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import w4a16_sass_compare as sass  # noqa: E402 - sets up the GPU target (no interpreter) before Triton is used

SHOWN = ("HGMMA", "HMMA", "MUFU", "FMUL", "FADD", "FFMA", "FMNMX", "FSEL", "SEL", "ISETP", "IMAD", "LEA", "IADD3",
         "SHF", "LDG", "LDGSTS", "LDS", "STS", "BAR", "F2FP")
HQ, HKV, D, PAGE = 32, 8, 128, 64
MACA_ARGS = {"q_ptr": "*bf16", "kc_ptr": "*bf16", "vc_ptr": "*bf16", "bt_ptr": "*i32", "seqlens_ptr": "*i32",
             "slopes_ptr": "*fp32", "o_ptr": "*bf16", "part_o_ptr": "*fp32", "part_lse_ptr": "*fp32",
             "cnt_ptr": "*i32", "scale": "fp32", "softcap": "fp32"}
MACA_NOT_DIVISIBLE = ("stride_bt", "NUM_SPLITS", "window", "G")  # do_not_specialize, or not a multiple of 16


def maca_rows(out: Path) -> list[dict[str, Any]]:
    """The split kernel as a batch-1 graph launch runs it: 64 splits, merge pass (no in-kernel merge), heads-first
    grid, the per-key loop (the default) and the page loop (``page_loop``), 2 and 3 pipeline stages."""
    from dlinfer_maca.kernels import attention

    fn = attention._decode_split_kernel
    rows = []
    for page_loop in (False, True):
        for stages in (2, 3):
            const = dict(PAGE=PAGE, D=D, DV=D, DIRECT=False, MERGE=False, HEADS_FIRST=True, BLOCK_G=16, BLOCK_N=64,
                         BLOCK_D=D, BLOCK_DV=D, MERGE_G=4, MERGE_S=4, USE_SOFTCAP=False, USE_ALIBI=False,
                         USE_WINDOW=False, DOT_PREC="tf32", PAGE_LOOP=page_loop, PDL_TRIGGER=True)
            sig = {n: "constexpr" if n in const else MACA_ARGS.get(n, "i32") for n in fn.arg_names}
            div = tuple(n for n in fn.arg_names if n not in const and n not in MACA_NOT_DIVISIBLE
                        and n not in ("scale", "softcap")) if sass.SPECIALISED else ()
            name = f"maca_split_bn64_w4s{stages}_{'page_loop' if page_loop else 'per_key'}"
            rows.append(sass.profile(sass._compile(fn, sig, const, 4, stages, div), name, out, SHOWN))
    return rows


def lmdeploy_rows(out: Path) -> list[dict[str, Any]]:
    """LMDeploy's split kernel at the launch its ``paged_attention_fwd`` makes on an H200 for this shape: BLOCK_H 16,
    BLOCK_N = page 64, 4 warps, 3 stages (``_kernel_meta_sm9x``), 32 splits (``_get_split_k``), PDL on sm_90."""
    try:
        from lmdeploy.pytorch.kernels.cuda import pagedattention as pa
    except ImportError as exc:  # the peer is optional
        print(f"LMDeploy's pagedattention not importable ({exc}): peer rows skipped", file=sys.stderr)
        return []
    split = 32
    const = dict(sm_scale=1.0 / D ** 0.5, alibi_slopes_ptr=None,
                 stride_qbs=HQ * D, stride_qh=D, stride_qd=1,
                 stride_kp=PAGE * HKV * D, stride_kbs=HKV * D, stride_kh=D, stride_kd=1,
                 stride_vp=PAGE * HKV * D, stride_vbs=HKV * D, stride_vh=D, stride_vd=1,
                 stride_ok=D + 2, stride_obs=HQ * split * (D + 2), stride_oh=split * (D + 2), stride_od=1,
                 kv_group_num=HQ // HKV, seq_len=1, window_size=-1, head_size=D, head_size_v=D, num_heads_q=HQ,
                 logit_softcapping=0.0, shared_kv=False, SPLIT_K=split, BLOCK_DMODEL=D, BLOCK_DV=D, BLOCK_N=PAGE,
                 BLOCK_H=16, BLOCK_DMODEL1=0, USE_PDL=True)
    runtime = {"q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "cache_seqlens_ptr": "*i32",
               "page_table_ptr": "*i32", "acc_out_ptr": "*fp32", "stride_boffb": "i32"}
    fn = pa._fwd_grouped_split_kernel
    sig = {n: runtime.get(n, "constexpr") for n in fn.arg_names}
    div = tuple(n for n in runtime if n != "stride_boffb") if sass.SPECIALISED else ()
    return [sass.profile(sass._compile(fn, sig, const, 4, 3, div), "lmdeploy_split_bn64_w4s3", out, SHOWN)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="keep the cubin and SASS files here")
    parser.add_argument("--no-peer", action="store_true", help="skip LMDeploy's kernel")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="decode-sass-"))
    out.mkdir(parents=True, exist_ok=True)
    rows = maca_rows(out) + ([] if args.no_peer else lmdeploy_rows(out))
    sass.print_table(rows, SHOWN, "Opcode columns count the key loop's body once (one 64-key block; static); "
                     "per_sm: programs per sm_90 SM.")
    print(f"(cubin and SASS in {out})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
