"""``dlinfer.graph_inputs.fill_decode_inputs`` (the contract, and the torch composition used when a backend declares
no kernel for it) against a per-row oracle, with poisoned buffers; padding on and off; refusals."""

from __future__ import annotations

import pytest
import torch

from dlinfer.graph_inputs import DecodeBuffers, fill_decode_inputs

POISON = -5


def _buffers(bucket: int, width: int, slot_dtype: torch.dtype) -> DecodeBuffers:
    return DecodeBuffers(*(torch.full(shape, POISON, dtype=dt) for shape, dt in (
        ((bucket,), torch.long), ((bucket,), torch.long), ((bucket, width), torch.int32), ((bucket,), torch.int32),
        ((bucket,), slot_dtype))))


@pytest.mark.parametrize("pad", [True, False])
@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64])
def test_rows_and_padding_match_the_oracle(pad: bool, slot_dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    bucket, b, w, width, bs = 6, 4, 3, 5, 8
    kv = torch.randint(1, w * bs + 1, (b,), generator=gen)
    table = torch.randint(0, 900, (b, w), generator=gen)
    ids, pos = torch.randint(0, 999, (1, b), generator=gen), (kv - 1)[None]
    buffers = _buffers(bucket, width, slot_dtype)
    fill_decode_inputs(ids, pos, table, kv, buffers, block_size=bs, pad=pad)
    for row in range(bucket):
        if row < b:
            p = int(kv[row]) - 1
            want = (int(ids[0, row]), p, int(kv[row]), int(table[row, p // bs]) * bs + p % bs)
            assert buffers.block_table[row].tolist() == table[row].tolist() + [POISON] * (width - w)
        else:
            want = (0, 0, 1, -1) if pad else (POISON,) * 4
            assert buffers.block_table[row].tolist() == [POISON] * width
        got = tuple(int(getattr(buffers, n)[row]) for n in ("input_ids", "position_ids", "seqlens_kv", "slots"))
        assert got == want, row
    assert buffers.slots.dtype == slot_dtype


def test_a_step_that_does_not_fit_is_refused() -> None:
    from dlinfer.graph_inputs import check_decode_inputs

    one = torch.ones(3, dtype=torch.long)
    with pytest.raises(ValueError, match="3 sequences do not fit the captured bucket of 2"):
        check_decode_inputs(one, one, one[:, None], one, _buffers(2, 4, torch.int64))
    with pytest.raises(ValueError, match="must match input_ids' 3 tokens, got 2"):
        check_decode_inputs(one, one[:2], one[:, None], one, _buffers(4, 4, torch.int64))
