"""The one-launch refill of a captured decode step's buffers (``DeviceGraph.fill_decode_inputs``) against a per-row
Python oracle of the contract in ``dlinfer.graph_inputs``: fresh random steps, poisoned buffers, int32/int64
tables and slots, strided table rows, tables wider than one loop step of the kernel, a partial bucket; invalid rows
write nowhere; the kernel builds for sm_90."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import DEVICE, needs_ptxas, run_as_for_gpu

from dlinfer.graph_inputs import DecodeBuffers
from dlinfer_maca.kernels import graph_inputs
from dlinfer_maca.plugin import dlinfer_backend

POISON = -77


def _buffers(bucket: int, width: int, slot_dtype: torch.dtype) -> DecodeBuffers:
    def full(*shape: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.full(shape, POISON, dtype=dtype, device=DEVICE)

    return DecodeBuffers(full(bucket, dtype=torch.long), full(bucket, dtype=torch.long),
                         full(bucket, width, dtype=torch.int32), full(bucket, dtype=torch.int32),
                         full(bucket, dtype=slot_dtype))


def _oracle(ids: list[int], pos: list[int], table: list[list[int]], kv: list[int], bucket: int, width: int,
            bs: int) -> dict[str, list]:
    """Row by row: the step's values and slot for b rows; token 0, position 0, KV length 1, slot -1 after; table
    columns past the step's width and padding rows' tables untouched (still poison)."""
    out: dict[str, list] = {"input_ids": [], "position_ids": [], "block_table": [], "seqlens_kv": [], "slots": []}
    for row in range(bucket):
        if row < len(ids):
            p = kv[row] - 1
            out["input_ids"].append(ids[row])
            out["position_ids"].append(pos[row])
            out["block_table"].append(table[row] + [POISON] * (width - len(table[row])))
            out["seqlens_kv"].append(kv[row])
            out["slots"].append(table[row][p // bs] * bs + p % bs)
        else:
            out["input_ids"].append(0)
            out["position_ids"].append(0)
            out["block_table"].append([POISON] * width)
            out["seqlens_kv"].append(1)
            out["slots"].append(-1)
    return out


@pytest.mark.parametrize("bucket,b,w,width,bs", [(1, 1, 1, 4, 16), (8, 5, 3, 6, 64), (4, 4, 7, 7, 16),
                                                 (16, 3, 300, 320, 16)])
@pytest.mark.parametrize("table_dtype,slot_dtype", [(torch.int64, torch.int64), (torch.int32, torch.int32)])
def test_fill_decode_inputs_matches_the_row_oracle(bucket: int, b: int, w: int, width: int, bs: int,
                                                   table_dtype: torch.dtype, slot_dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(bucket * 1000 + w)
    kv = torch.randint(1, w * bs + 1, (b,), generator=gen)
    wide = torch.randint(0, 5000, (b, w + 5), generator=gen).to(table_dtype)
    table = wide[:, 2 : 2 + w]  # strided rows (a view into a wider table), contiguous columns
    ids = torch.randint(0, 50000, (1, b), generator=gen)
    pos = (kv - 1)[None] + torch.randint(0, 3, (1, b), generator=gen)
    buffers = _buffers(bucket, width, slot_dtype)
    graph_inputs.fill_decode_inputs(ids.to(DEVICE), pos.to(DEVICE), table.to(DEVICE), kv.to(DEVICE), buffers,
                                    block_size=bs)
    want = _oracle(ids[0].tolist(), pos[0].tolist(), table.tolist(), kv.tolist(), bucket, width, bs)
    for name, rows in want.items():
        got = getattr(buffers, name)
        assert got.tolist() == rows, name
    assert buffers.slots.dtype == slot_dtype and buffers.block_table.dtype == torch.int32


def test_strided_token_and_length_views_are_read_densely() -> None:
    """Sources that are strided views (every other element of a larger tensor) give the same rows as dense ones."""
    gen = torch.Generator().manual_seed(21)
    wide_ids = torch.randint(0, 999, (1, 8), generator=gen)
    kv_wide = torch.randint(1, 33, (8,), generator=gen)
    table = torch.randint(0, 99, (4, 2), generator=gen)
    ids, kv = wide_ids[:, ::2], kv_wide[::2]
    assert ids.stride(-1) == 2 and kv.stride(0) == 2
    got, want = _buffers(4, 2, torch.int64), _buffers(4, 2, torch.int64)
    graph_inputs.fill_decode_inputs(ids.to(DEVICE), (kv - 1).to(DEVICE), table.to(DEVICE), kv.to(DEVICE), got,
                                    block_size=16)
    graph_inputs.fill_decode_inputs(ids.contiguous().to(DEVICE), (kv - 1).to(DEVICE), table.to(DEVICE),
                                    kv.contiguous().to(DEVICE), want, block_size=16)
    for name in ("input_ids", "position_ids", "block_table", "seqlens_kv", "slots"):
        assert getattr(got, name).tolist() == getattr(want, name).tolist(), name
    assert got.input_ids.tolist() == ids[0].tolist()


def test_fill_decode_inputs_refuses_a_step_that_does_not_fit() -> None:
    buffers = _buffers(2, 4, torch.int64)
    one = torch.ones(3, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match="3 sequences do not fit the captured bucket of 2"):
        graph_inputs.fill_decode_inputs(one, one, one[:, None], one, buffers, block_size=16)
    two = one[:2]
    with pytest.raises(ValueError, match="block_table of 5 columns, the captured table holds 4"):
        graph_inputs.fill_decode_inputs(two, two, torch.ones(2, 5, dtype=torch.long, device=DEVICE), two, buffers,
                                        block_size=16)


def test_plugin_declares_the_kernel_for_its_device_graph() -> None:
    """The maca declaration's ``fill_decode_inputs`` runs this module's kernel (imported at the first call)."""
    backend = dlinfer_backend()
    assert backend.graph is not None and backend.graph.fill_decode_inputs is not None
    buffers = _buffers(2, 3, torch.int64)
    kv = torch.tensor([5], device=DEVICE)
    backend.graph.fill_decode_inputs(torch.tensor([[9]], device=DEVICE), kv[None] - 1,
                                     torch.tensor([[4, 7]], device=DEVICE), kv, buffers, block_size=4)
    assert buffers.slots.tolist() == [7 * 4 + 0, -1] and buffers.block_table[0].tolist() == [4, 7, POISON]


def test_a_length_past_the_table_writes_nowhere() -> None:
    """Invalid rows (KV length 0, or past the step's table) get slot -1 instead of a slot read past the row."""
    buffers = _buffers(3, 2, torch.int64)
    table = torch.tensor([[3, 4], [5, 6], [7, 8]], device=DEVICE)
    kv = torch.tensor([5, 33, 0], device=DEVICE)  # block size 16: row 1 needs a third column, row 2 has no token
    ids = torch.tensor([1, 2, 3], device=DEVICE)
    graph_inputs.fill_decode_inputs(ids, ids, table, kv, buffers, block_size=16)
    assert buffers.slots.tolist() == [3 * 16 + 4, -1, -1]


_COMPILE = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from dlinfer_maca.kernels.graph_inputs import BLOCK_COLUMNS, _fill_decode_inputs_kernel as kernel
for table, slot in (("*i64", "*i64"), ("*i32", "*i32")):
    sig = dict(ids_src="*i64", pos_src="*i64", table_src=table, kv_src="*i64", ids_dst="*i64", pos_dst="*i64",
               table_dst="*i32", kv_dst="*i32", slot_dst=slot, stride_src_row="i32", stride_dst_row="i32",
               B="i32", W="i32", BS="i32", BLOCK_W="constexpr")
    out = triton.compile(ASTSource(kernel, sig, {"BLOCK_W": BLOCK_COLUMNS}), target=GPUTarget("cuda", 90, 32),
                         options={"num_warps": 1})
    assert out.asm["cubin"], table
print("compiled")
"""


@needs_ptxas
def test_refill_kernel_compiles_for_sm90(tmp_path: Path) -> None:
    """The interpreter cannot catch a lowering error: build the kernel for sm_90 with Triton's bundled ptxas."""
    proc = run_as_for_gpu(["-c", _COMPILE], tmp_path, timeout=300)
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]
