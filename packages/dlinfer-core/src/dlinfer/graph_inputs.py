"""Refilling the fixed input buffers of a captured decode step before each replay.

A graph runner captures a decode step of ``bucket`` sequences once and replays it from fixed buffers; before every
replay the step's ``b <= bucket`` real sequences are copied in and the ``bucket - b`` padding rows are made
harmless. :func:`fill_decode_inputs` is the contract (and the composition of torch ops used when a backend declares
no kernel for it); a backend may declare one kernel doing the same in ``DeviceGraph.fill_decode_inputs``, because
these small copies sit on the host's critical path between two replays (one launch each).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DecodeBuffers:
    """The fixed buffers of a captured decode step of ``bucket`` sequences (one new token each).

    ``input_ids`` [bucket] (the token dtype), ``position_ids`` [bucket] int64, ``block_table`` [bucket, MB] int32,
    ``seqlens_kv`` [bucket] int32 (KV length including the new token), ``slots`` [bucket] int32 or int64 (the cache
    slot the new token's K/V is written to: ``block * block_size + offset``; negative writes nothing).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    block_table: torch.Tensor
    seqlens_kv: torch.Tensor
    slots: torch.Tensor

    @property
    def bucket(self) -> int:
        return int(self.input_ids.shape[0])


def check_decode_inputs(
    input_ids: torch.Tensor, position_ids: torch.Tensor, block_table: torch.Tensor, seqlens_kv: torch.Tensor,
    buffers: DecodeBuffers,
) -> None:
    """Raise ``ValueError`` (naming the argument, expected vs actual) when the step does not fit the buffers."""
    b = input_ids.numel()
    where = "dlinfer fill_decode_inputs"
    if position_ids.numel() != b or seqlens_kv.numel() != b or block_table.shape[0] != b:
        raise ValueError(f"{where}: position_ids, seqlens_kv and block_table rows must match input_ids' {b} tokens, "
                         f"got {position_ids.numel()}, {seqlens_kv.numel()}, {block_table.shape[0]}")
    if b > buffers.bucket:
        raise ValueError(f"{where}: {b} sequences do not fit the captured bucket of {buffers.bucket}")
    if block_table.shape[1] > buffers.block_table.shape[1]:
        raise ValueError(f"{where}: block_table of {block_table.shape[1]} columns, the captured table holds "
                         f"{buffers.block_table.shape[1]}")


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
    """Copy one decode step of ``b`` sequences into ``buffers`` and compute its slots.

    ``input_ids`` / ``position_ids`` [b] (any shape of b elements), ``block_table`` [b, W] (W <= MB; any integer
    dtype), ``seqlens_kv`` [b] (any integer dtype). Rows ``< b``: the inputs, ``block_table[:b, :W]`` (columns from
    W on are left as they are: no kernel reads past a sequence's length), and ``slots[i] = block_table[i, p //
    block_size] * block_size + p % block_size`` with ``p = seqlens_kv[i] - 1``. Padding rows ``>= b`` (when ``pad``):
    token and position 0, KV length 1 (they read one cached position of whatever block their table row holds) and
    slot -1 (they write nothing). ``pad=False`` leaves the padding rows as they are (a caller that knows they are
    already padded). Issues no host synchronisation.
    """
    b = input_ids.numel()
    w = block_table.shape[1]
    buffers.input_ids[:b].copy_(input_ids.reshape(-1))
    buffers.position_ids[:b].copy_(position_ids.reshape(-1))
    buffers.block_table[:b, :w].copy_(block_table)
    buffers.seqlens_kv[:b].copy_(seqlens_kv)
    pos = seqlens_kv.reshape(-1).long() - 1
    blocks = buffers.block_table[:b].gather(1, (pos // block_size)[:, None])[:, 0]
    torch.add(pos % block_size, blocks, alpha=block_size, out=buffers.slots[:b])
    if pad and b < buffers.bucket:
        buffers.input_ids[b:].zero_()
        buffers.position_ids[b:].zero_()
        buffers.seqlens_kv[b:].fill_(1)
        buffers.slots[b:].fill_(-1)
