"""The step's attention metadata: host mirrors with at most one device-to-host copy per step (was two), the
plugin's plan built once per step and handed to every attention call of the step; a one-token decode step's
metadata deferred (no device op, no host read when built) and finished once, equal to an independent oracle."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from dlinfer.plugin import Backend, StepMetadata
from lmdeploy.messages import QuantPolicy

from dlinfer_lmdeploy import metadata

BS = 4
_READS = ("cpu", "tolist", "item", "numpy", "__int__")


@pytest.fixture
def host_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every device-to-host read of a tensor (``.cpu()``, ``.to('cpu')``, ``tolist``, ``item``, ``int()``).

    The CPU device's ``CudaToHostMode`` (left active in this thread by any earlier in-process engine of the test
    session) is suspended: it rewrites ``.to`` calls and would make the count depend on the test order."""
    from dlinfer_lmdeploy import cpu_device

    suspended = getattr(cpu_device._STATE.local, "mode", None) is not None
    if suspended:
        cpu_device._exit_mode_in_this_thread()
    seen: list[str] = []
    for name in _READS:
        orig = getattr(torch.Tensor, name)

        def spy(self, *a, _orig=orig, _name=name, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
            seen.append(_name)
            return _orig(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, spy)
    orig_to = torch.Tensor.to

    def to(self, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        target = kw.get("device", a[0] if a else None)
        if isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu":
            seen.append("to(cpu)")
        return orig_to(self, *a, **kw)

    monkeypatch.setattr(torch.Tensor, "to", to)
    yield seen
    if suspended:
        cpu_device._enter_mode_in_this_thread()


def _backend(prepare: Any = None, host_seqlens: bool = True) -> Backend:
    return Backend(name="toy", device_type="cpu", api_version=">=1.0,<2", is_available=lambda: True,
                   load_ops=dict, host_seqlens=host_seqlens, prepare_metadata=prepare)


def _ctx(q: list[int], kv: list[int], decoding: bool) -> SimpleNamespace:
    blocks = max(-(-k // BS) for k in kv)
    cache = torch.zeros(64, BS, 1, 8)
    qt = torch.tensor(q)
    return SimpleNamespace(
        kv_caches=[(cache, cache)], q_seqlens=qt, kv_seqlens=torch.tensor(kv, dtype=torch.int32),
        q_start_loc=torch.cumsum(qt, 0) - qt,
        block_offsets=torch.randperm(64)[: len(q) * blocks].view(len(q), blocks),
        input_ids=torch.zeros(1, sum(q), dtype=torch.long), is_decoding=decoding, max_q_seqlen=max(q),
        max_kv_seqlen=max(kv), sum_kv_seqlen=sum(kv), kv_quant_policy=QuantPolicy.NONE)


STEPS = {  # q lengths, kv lengths, decoding, device-to-host reads per step (the old builder: 2 every step)
    "decode": ([1, 1, 1], [9, 17, 4], True, 1),
    "multi-token-decode": ([3, 3], [10, 12], True, 1),
    "prefill-uniform-no-history": ([4, 4], [4, 4], False, 0),
    "prefill-varlen-no-history": ([3, 5], [3, 5], False, 1),
    "prefill-with-history": ([3, 5], [10, 5], False, 1),
}


@pytest.mark.parametrize("name", list(STEPS))
def test_host_mirrors_take_at_most_one_copy(name: str, host_reads: list[str]) -> None:
    q, kv, decoding, reads = STEPS[name]
    ctx = _ctx(q, kv, decoding)
    meta = metadata.build(ctx, _backend()).finalize()
    assert len(host_reads) == reads, host_reads
    host_reads.clear()
    want_cu = [0]
    for n in q:
        want_cu.append(want_cu[-1] + n)
    assert meta.cu_seqlens_q_cpu.dtype == meta.seqlens_kv_cpu.dtype == torch.int32
    assert meta.cu_seqlens_q_cpu.device.type == "cpu"
    assert meta.cu_seqlens_q_cpu.tolist() == want_cu == meta.cu_seqlens_q.tolist()
    assert meta.seqlens_kv_cpu.tolist() == kv == meta.kv_seqlens.tolist()


def test_no_mirrors_without_host_seqlens(host_reads: list[str]) -> None:
    meta = metadata.build(_ctx([3, 5], [10, 5], False), _backend(host_seqlens=False)).finalize()
    assert host_reads == [] and meta.cu_seqlens_q_cpu is None and meta.seqlens_kv_cpu is None


@pytest.mark.parametrize("name", list(STEPS))
def test_plan_is_prepared_once_per_step_from_the_step_tensors(name: str) -> None:
    q, kv, decoding, _ = STEPS[name]
    calls: list[StepMetadata] = []
    token = object()

    def prepare(step: StepMetadata) -> object:
        calls.append(step)
        return token

    meta = metadata.build(_ctx(q, kv, decoding), _backend(prepare)).finalize()
    (step,) = calls
    assert meta.plan is token
    assert step.cu_seqlens_q is meta.cu_seqlens_q and step.seqlens_kv is meta.kv_seqlens
    assert step.block_table is meta.block_offsets and step.seqlens_kv_cpu is meta.seqlens_kv_cpu
    assert step.decode == (decoding and len(q) == sum(q)) and step.block_size == BS
    assert (step.max_seqlen_q, step.max_seqlen_kv) == (meta.max_q_seqlen, meta.max_kv_seqlen)


def test_every_attention_call_gets_the_step_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    from dlinfer import ops

    from dlinfer_lmdeploy.impls.attention import DlinferPagedAttentionImpl

    token = object()
    got: list[tuple[str, object]] = []
    for op in ("paged_decode_attention", "paged_prefill_attention", "prefill_attention"):
        monkeypatch.setattr(ops, op, lambda *a, _op=op, plan=None, **kw: got.append((_op, plan)))
    monkeypatch.setattr(ops, "fill_kv_cache", lambda *a, **kw: None)
    impl = DlinferPagedAttentionImpl(num_heads=1, head_size=8, num_kv_heads=1)
    for name in ("decode", "prefill-uniform-no-history", "prefill-with-history"):
        q, kv, decoding, _ = STEPS[name]
        ctx = _ctx(q, kv, decoding)
        meta = metadata.build(ctx, _backend(lambda step: token))
        x = torch.zeros(sum(q), 1, 8)
        impl.forward(x, x, x, ctx.kv_caches[0][0], ctx.kv_caches[0][1], meta)
    assert got == [("paged_decode_attention", token), ("prefill_attention", token),
                   ("paged_prefill_attention", token)]


def _oracle_slots(ctx: SimpleNamespace) -> list[int]:
    """Per sequence, the slot of its last position: block_offsets[b][p // BS] * BS + p % BS, p = kv - 1."""
    slots = []
    for b, kv in enumerate(ctx.kv_seqlens.tolist()):
        p = kv - 1
        slots.append(int(ctx.block_offsets[b, p // BS]) * BS + p % BS)
    return slots


@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64])
def test_one_token_decode_metadata_is_deferred_then_finished_once(slot_dtype: torch.dtype,
                                                                   host_reads: list[str]) -> None:
    """Built, a one-token decode step's metadata holds LMDeploy's own tensors and costs no device op and no host
    read (a graph runner refills its buffers from them); finished, it holds the int32 table and lengths, the
    query offsets, the slots of an independent oracle and the host mirrors; a second finish changes nothing."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN202
            self.names.append(func.__name__)
            return func(*args, **(kwargs or {}))

    gen = torch.Generator().manual_seed(11)
    kv = torch.randint(1, 40, (5,), generator=gen).tolist()
    ctx = _ctx([1] * 5, kv, True)
    ctx.kv_seqlens = ctx.kv_seqlens.long()  # LMDeploy's int64 lengths and table on a non-CUDA device
    backend = _backend(host_seqlens=True)
    backend = Backend(**{**backend.__dict__, "slot_dtype": slot_dtype})
    host_reads.clear()
    with Ops() as ops:
        meta = metadata.build(ctx, backend)
    assert ops.names == [] and host_reads == []
    assert meta.unfinished is backend and meta.slot_mapping is None and meta.cu_seqlens_q is None
    assert meta.block_offsets is ctx.block_offsets and meta.kv_seqlens is ctx.kv_seqlens
    assert meta.finalize() is meta and meta.unfinished is None
    assert meta.block_offsets.dtype == meta.kv_seqlens.dtype == torch.int32 == meta.cu_seqlens_q.dtype
    assert meta.block_offsets.tolist() == ctx.block_offsets.tolist() and meta.kv_seqlens.tolist() == kv
    assert meta.cu_seqlens_q.tolist() == list(range(6)) == meta.cu_seqlens_q_cpu.tolist()
    assert meta.seqlens_kv_cpu.tolist() == kv
    assert meta.slot_mapping.dtype == slot_dtype and meta.slot_mapping.tolist() == _oracle_slots(ctx)
    slots = meta.slot_mapping
    with Ops() as ops:
        meta.finalize()
    assert ops.names == [] and meta.slot_mapping is slots


def test_attention_finishes_a_deferred_decode_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model called without a dlinfer runner (which finishes the metadata first) still gets the slots."""
    from dlinfer import ops

    from dlinfer_lmdeploy.impls.attention import DlinferPagedAttentionImpl

    seen: list[list[int]] = []
    monkeypatch.setattr(ops, "fill_kv_cache", lambda k, v, kc, vc, slots, **kw: seen.append(slots.tolist()))
    monkeypatch.setattr(ops, "paged_decode_attention", lambda q, *a, **kw: q)
    ctx = _ctx([1, 1], [7, 13], True)
    meta = metadata.build(ctx, _backend())
    x = torch.zeros(2, 1, 8)
    DlinferPagedAttentionImpl(num_heads=1, head_size=8, num_kv_heads=1).forward(
        x, x, x, ctx.kv_caches[0][0], ctx.kv_caches[0][1], meta)
    assert meta.unfinished is None and seen == [_oracle_slots(ctx)]


def _oracle_prefill_slots(block_offsets: torch.Tensor, q: list[int], kv: list[int]) -> list[int]:
    """Every new token's slot: sequence b's tokens sit at positions kv[b] - q[b] .. kv[b] - 1."""
    slots = []
    for b, (qb, kb) in enumerate(zip(q, kv, strict=True)):
        for p in range(kb - qb, kb):
            slots.append(int(block_offsets[b, p // BS]) * BS + p % BS)
    return slots


@pytest.mark.parametrize("attention_call", [False, True], ids=["finalize", "attention-impl"])
def test_kv_seqlens_replaced_after_the_build_are_derived_again(attention_call: bool,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """InternVL's flash mode assigns new ``kv_seqlens`` to a built prefill step's metadata (its compressed history
    plus the segment), as LMDeploy's own kernels read the lengths at call time. The slots, the host mirrors, the
    no-history flag and the plan then follow the new lengths; without a replacement nothing is derived again."""
    from dlinfer import ops

    from dlinfer_lmdeploy.impls.attention import DlinferPagedAttentionImpl

    plans: list[StepMetadata] = []
    backend = _backend(prepare=lambda step: plans.append(step) or len(plans))
    gen = torch.Generator().manual_seed(5)
    q = torch.randint(1, 6, (3,), generator=gen).tolist()
    history = torch.randint(4, 20, (3,), generator=gen).tolist()
    ctx = _ctx(q, [h + n for h, n in zip(history, q, strict=True)], False)
    meta = metadata.build(ctx, backend)
    assert not meta.stale() and len(plans) == 1
    assert meta.finalize() is meta and len(plans) == 1  # nothing replaced: nothing derived again
    compressed = [torch.randint(0, h, (1,), generator=gen).item() for h in history]  # shorter history
    new_kv = [c + n for c, n in zip(compressed, q, strict=True)]
    meta.kv_seqlens = torch.tensor(new_kv, dtype=torch.long)  # as internvl.py's prepare_inputs_for_generation does
    assert meta.stale()
    if attention_call:
        seen: list[list[int]] = []
        monkeypatch.setattr(ops, "fill_kv_cache", lambda k, v, kc, vc, slots, **kw: seen.append(slots.tolist()))
        monkeypatch.setattr(ops, "paged_prefill_attention", lambda qq, *a, **kw: qq)
        monkeypatch.setattr(ops, "prefill_attention", lambda qq, *a, **kw: qq)
        x = torch.zeros(sum(q), 1, 8)
        DlinferPagedAttentionImpl(num_heads=1, head_size=8, num_kv_heads=1).forward(
            x, x, x, ctx.kv_caches[0][0], ctx.kv_caches[0][1], meta)
        assert seen == [_oracle_prefill_slots(ctx.block_offsets, q, new_kv)]
    else:
        meta.finalize()
    assert not meta.stale() and len(plans) == 2 and meta.plan == 2
    assert meta.slot_mapping.tolist() == _oracle_prefill_slots(ctx.block_offsets, q, new_kv)
    assert meta.kv_seqlens.dtype == torch.int32 and meta.kv_seqlens.tolist() == new_kv
    assert meta.seqlens_kv_cpu.tolist() == new_kv and plans[-1].seqlens_kv.tolist() == new_kv
    assert meta.prefill_no_cache == (compressed == [0, 0, 0])
    assert meta.max_kv_seqlen >= max(new_kv)
    slots = meta.slot_mapping
    meta.finalize()
    assert meta.slot_mapping is slots and len(plans) == 2


def test_a_finished_decode_step_with_replaced_kv_seqlens_takes_the_new_slots() -> None:
    """The decode side of the same replacement after the runner finished the step (a model that replaces the
    lengths in its forward rather than in ``prepare_inputs_for_generation``)."""
    ctx = _ctx([1, 1, 1], [9, 17, 4], True)
    meta = metadata.build(ctx, _backend()).finalize()
    new_kv = [5, 3, 2]
    meta.kv_seqlens = torch.tensor(new_kv)
    meta.finalize()
    want = [int(ctx.block_offsets[b, (k - 1) // BS]) * BS + (k - 1) % BS for b, k in enumerate(new_kv)]
    assert meta.slot_mapping.tolist() == want and meta.seqlens_kv_cpu.tolist() == new_kv
