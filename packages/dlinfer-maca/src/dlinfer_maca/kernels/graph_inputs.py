"""One launch that refills a captured decode step's fixed buffers (``DeviceGraph.fill_decode_inputs``).

The contract is :func:`dlinfer.graph_inputs.fill_decode_inputs`: real rows get the step's token, position, block
table row, KV length and the slot computed from them; padding rows get token 0, position 0, KV length 1, slot -1.
The torch composition of that contract issues 9-13 launches per step (copies, the slot arithmetic, the padding
fills); each one is host time between two graph replays.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dlinfer.graph_inputs import DecodeBuffers, check_decode_inputs

from . import _utils  # noqa: F401  (patches Triton's interpreter for runtime loop bounds under TRITON_INTERPRET=1)

BLOCK_COLUMNS = 128
"""Block-table columns copied per loop step of one program (fixed: one compiled kernel for every table width)."""


# One compiled kernel for the engine's life: the batch, the table width and the strides change from step to step
# and the source pointers are LMDeploy's tensors of the step, so none of them is specialised on (each value class
# would otherwise compile a variant in the middle of serving).
@triton.jit(do_not_specialize=["stride_src_row", "stride_dst_row", "B", "W"],
            do_not_specialize_on_alignment=["ids_src", "pos_src", "table_src", "kv_src"])
def _fill_decode_inputs_kernel(
    ids_src, pos_src, table_src, kv_src,
    ids_dst, pos_dst, table_dst, kv_dst, slot_dst,
    stride_src_row, stride_dst_row, B, W, BS,
    BLOCK_W: tl.constexpr,
):
    row = tl.program_id(0)
    if row < B:
        kv = tl.load(kv_src + row).to(tl.int64)
        tl.store(ids_dst + row, tl.load(ids_src + row))
        tl.store(pos_dst + row, tl.load(pos_src + row).to(tl.int64))
        tl.store(kv_dst + row, kv.to(tl.int32))
        src_row = table_src + row.to(tl.int64) * stride_src_row
        dst_row = table_dst + row.to(tl.int64) * stride_dst_row
        cols = tl.arange(0, BLOCK_W)
        for start in range(0, W, BLOCK_W):
            c = start + cols
            blocks = tl.load(src_row + c, mask=c < W)
            tl.store(dst_row + c, blocks.to(tl.int32), mask=c < W)
        p = kv - 1
        col = p // BS
        inside = (p >= 0) & (col < W)  # a length past the table (invalid input) writes nothing, not a stray block
        block = tl.load(src_row + col, mask=inside, other=0).to(tl.int64)
        slot = tl.where(inside, block * BS + p % BS, -1)
        tl.store(slot_dst + row, slot.to(slot_dst.dtype.element_ty))
    else:
        tl.store(ids_dst + row, tl.zeros((), dtype=ids_dst.dtype.element_ty))
        tl.store(pos_dst + row, tl.zeros((), dtype=tl.int64))
        tl.store(kv_dst + row, tl.full((), 1, dtype=tl.int32))
        tl.store(slot_dst + row, tl.full((), -1, dtype=slot_dst.dtype.element_ty))


def _unit_stride(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a 1-d tensor the kernel may index densely (a strided view is copied)."""
    flat = x.reshape(-1)
    return flat if flat.stride(0) == 1 or flat.numel() <= 1 else flat.contiguous()


def fill_decode_inputs(
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    block_table: torch.Tensor,
    seqlens_kv: torch.Tensor,
    buffers: DecodeBuffers,
    *,
    block_size: int,
    pad: bool = True,
) -> None:
    """:func:`dlinfer.graph_inputs.fill_decode_inputs` in one launch (``bucket`` programs, one per row).

    The padding rows are rewritten on every call, ``pad`` or not (they cost nothing extra in this launch). The
    block table's columns must be contiguous (its rows may be strided); the 1-d buffers contiguous. A row whose KV
    length is below 1 or past its table's columns (invalid input, where the torch composition raises) gets slot -1:
    its token is written nowhere rather than into a block the row does not own.
    """
    check_decode_inputs(input_ids, position_ids, block_table, seqlens_kv, buffers)
    if block_table.stride(1) != 1:
        block_table = block_table.contiguous()
    b, w = block_table.shape
    _fill_decode_inputs_kernel[(buffers.bucket,)](
        _unit_stride(input_ids), _unit_stride(position_ids), block_table, _unit_stride(seqlens_kv),
        buffers.input_ids, buffers.position_ids, buffers.block_table, buffers.seqlens_kv, buffers.slots,
        block_table.stride(0), buffers.block_table.stride(0), b, w, block_size,
        BLOCK_W=BLOCK_COLUMNS,
        num_warps=1,
    )
