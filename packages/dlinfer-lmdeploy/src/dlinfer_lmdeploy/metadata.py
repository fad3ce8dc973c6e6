"""Per-step attention metadata in the form the active dlinfer backend declared.

Built once per forward step by ``OpsBackend.update_step_context`` (LMDeploy calls it from
``StepContext.new``) and read by every attention layer of the step. A one-token decode step's is built unfinished
(LMDeploy's tensors as they are, no device op) and finished by the runner that runs the step eagerly
(:meth:`DlinferAttentionMetadata.finalize`); a graph replay refills its own buffers from LMDeploy's tensors instead.
It carries the explicit batch metadata of the dlinfer spec (dlinfer-core README, "Ops"): ``cu_seqlens_q`` and
``seqlens_kv`` (int32), the int32 block table, the slot mapping in the plugin's slot dtype,
host mirrors only when the plugin asked for them (``Backend.host_seqlens``), and the KV
layout the plugin declared, and the plugin's once-per-step plan (``Backend.prepare_metadata``) that every
attention call of the step receives as ``plan=``.

Host mirrors: LMDeploy 0.18's ``StepContext`` carries the lengths as device tensors only (its host copies stay in
the model agent's H2D transfer record), plus the host ints ``max_q_seqlen``, ``max_kv_seqlen`` and
``sum_kv_seqlen``. The query offsets are therefore built on the host whenever those ints determine them (decode:
``0..B``; prefill whose sequences all have ``max_q_seqlen`` tokens), and the lengths that remain are read in one
device-to-host copy per step (none for a uniform prefill without history, whose KV lengths are its query lengths).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from dlinfer.plugin import Backend, StepMetadata
from lmdeploy.pytorch.backends.attention import AttentionMetadata


@dataclass
class DlinferAttentionMetadata(AttentionMetadata):
    """LMDeploy's base attention metadata plus the dlinfer spec's batch metadata.

    Base fields keep LMDeploy's meaning (``block_offsets``, ``q_start_loc``, ``q_seqlens``,
    ``kv_seqlens``); ``block_offsets`` and ``kv_seqlens`` are int32 here, ``cu_seqlens_q`` is
    int32 ``[B+1]``.
    """

    slot_mapping: torch.Tensor | None = None
    max_q_seqlen: int = 1
    max_kv_seqlen: int = 1
    block_size: int = 0
    kv_layout: str = "NHD"
    prefill_no_cache: bool = False
    """Every sequence of this prefill step starts at position 0 (no history): varlen attention without cache."""
    multi_token_decode: bool = False
    """A decode step with more than one new token per sequence (speculative decoding's ``num_spec_tokens + 1``):
    its slots cover every new token and attention runs as a paged prefill over the cache."""
    cu_seqlens_q_cpu: torch.Tensor | None = None
    seqlens_kv_cpu: torch.Tensor | None = None
    plan: Any = None
    """The plugin's plan for this step (``Backend.prepare_metadata``), passed to every attention call."""
    unfinished: Backend | None = field(default=None, repr=False)
    """Set (to the step's backend) while a one-token decode step's metadata still holds LMDeploy's own
    ``block_offsets`` and ``kv_seqlens`` and lacks what is derived from them; :meth:`finalize` derives it."""
    derived_from: torch.Tensor | None = field(default=None, repr=False)
    """The ``kv_seqlens`` tensor that the slots, host mirrors and plan were derived from (None: buffers a graph
    runner owns). A model that assigns a new ``kv_seqlens`` after the build (InternVL's flash mode does in its text
    prefill segments, as LMDeploy's CUDA kernels read the lengths at call time) leaves them stale;
    :meth:`stale` says so and :meth:`finalize` derives them again."""
    backend: Backend | None = field(default=None, repr=False)
    """The step's backend (slot dtype, host mirrors, plan), for :meth:`finalize`."""
    num_tokens: int = 0
    """New tokens of the step (query rows)."""

    def finalize(self) -> DlinferAttentionMetadata:
        """Derive what a one-token decode step's attention calls read (int32 block table and KV lengths, query
        offsets, slot mapping, host mirrors, the plugin's plan); a no-op once done. ``build`` defers this for
        decode steps because a graph runner that replays the step refills its fixed buffers from LMDeploy's tensors
        directly (``DeviceGraph.fill_decode_inputs``): the derived tensors would be launches on the host's critical
        path that nothing reads. Every runner that runs a step eagerly calls it; the attention Impl does too, as a
        guard for a model called some other way. Reads the fields as they are then (a model's
        ``prepare_inputs_for_generation`` may have replaced ``kv_seqlens``). Finished metadata whose ``kv_seqlens``
        a model replaced since (:meth:`stale`) is derived again from the new lengths."""
        backend = self.unfinished
        if backend is None:
            if self.stale():
                self._derive_again()
            return self
        self.unfinished = None
        table, kv = self.block_offsets, self.kv_seqlens
        batch = self.q_seqlens.numel()
        self.block_offsets = table.to(torch.int32)
        self.kv_seqlens = kv.to(torch.int32)
        self.cu_seqlens_q = torch.arange(batch + 1, dtype=torch.int32, device=kv.device)
        # from LMDeploy's own tensors (int64 on non-CUDA devices): no int32 -> int64 round trip
        self.slot_mapping = slot_mapping(table, self.q_seqlens, kv, self.q_start_loc, batch, self.block_size, True,
                                         backend.slot_dtype)
        self.derived_from = self.kv_seqlens
        _derive_host_and_plan(self, backend, batch)
        return self

    def stale(self) -> bool:
        """True when a model assigned a new ``kv_seqlens`` after the slots, mirrors and plan were derived."""
        return self.derived_from is not None and self.kv_seqlens is not self.derived_from

    def _derive_again(self) -> None:
        """Slots, KV capacity, the no-history flag, host mirrors and plan from the replaced ``kv_seqlens`` (one host
        read of the new lengths: a step whose lengths a model replaced)."""
        backend = self.backend
        assert backend is not None, "derived metadata records its backend"
        kv = self.kv_seqlens
        one_token = self.is_decoding and not self.multi_token_decode
        self.kv_seqlens = kv.to(torch.int32)
        self.slot_mapping = slot_mapping(self.block_offsets, self.q_seqlens, kv, self.q_start_loc, self.num_tokens,
                                         self.block_size, one_token, backend.slot_dtype)
        self.max_kv_seqlen = max(self.max_kv_seqlen, int(kv.max())) if kv.numel() else self.max_kv_seqlen
        self.prefill_no_cache = (not self.is_decoding) and bool(torch.equal(kv.long(), self.q_seqlens.long()))
        self.derived_from = self.kv_seqlens
        _derive_host_and_plan(self, backend, self.num_tokens)


def finish_step_metadata(forward_kwargs: dict[str, Any]) -> None:
    """Finish the deferred metadata of a decode step (``build``) among a forward's keyword arguments, before the
    model runs eagerly (graph runners' fallbacks, the eager runner)."""
    meta = forward_kwargs.get("attn_metadata")
    if isinstance(meta, DlinferAttentionMetadata):
        meta.finalize()


def cache_block_size(k_cache: torch.Tensor, kv_layout: str) -> int:
    """Block size of a ``[num_blocks, *block_shape]`` key cache in the given layout."""
    return int(k_cache.shape[1] if kv_layout == "NHD" else k_cache.shape[2])


def slot_mapping(
    block_offsets: torch.Tensor,
    q_seqlens: torch.Tensor,
    kv_seqlens: torch.Tensor,
    q_start_loc: torch.Tensor,
    num_tokens: int,
    block_size: int,
    is_decoding: bool,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Slot (``block_id * block_size + offset``) of every new token; no host synchronisation.

    ``is_decoding``: one new token per sequence (the last position of each). A decode step with several tokens
    per sequence is passed as ``is_decoding=False``: each sequence's new tokens are its last ``q_seqlens``.
    """
    # the block table is read in its own dtype (LMDeploy's: int32 on CUDA, int64 elsewhere): converting the whole
    # [B, max_blocks] table for the B entries used would be one more kernel per step
    if is_decoding:
        pos = kv_seqlens.long() - 1
        blocks = block_offsets.gather(1, (pos // block_size)[:, None])[:, 0]
        return torch.add(pos % block_size, blocks, alpha=block_size).to(dtype)  # one kernel for the scale and add
    batch = q_seqlens.numel()
    seq_of_token = torch.repeat_interleave(
        torch.arange(batch, device=q_seqlens.device), q_seqlens.long(), output_size=num_tokens
    )
    history = (kv_seqlens.long() - q_seqlens.long())[seq_of_token]
    offset_in_seq = torch.arange(num_tokens, device=q_seqlens.device) - q_start_loc.long()[seq_of_token]
    pos = history + offset_in_seq
    blocks = block_offsets[seq_of_token, pos // block_size]
    return torch.add(pos % block_size, blocks, alpha=block_size).to(dtype)


def build(step_context: object, backend: Backend) -> DlinferAttentionMetadata:
    """The step's attention metadata (called once per step). A one-token decode step's comes back unfinished
    (LMDeploy's tensors, nothing derived: no device work); :meth:`DlinferAttentionMetadata.finalize` completes it."""
    ctx = step_context
    kv_caches = getattr(ctx, "kv_caches", None)
    if not kv_caches:
        raise RuntimeError("dlinfer-lmdeploy: the step context has no KV caches; cannot build attention metadata")
    block_size = cache_block_size(kv_caches[0][0], backend.kv_layout)
    q_seqlens: torch.Tensor = ctx.q_seqlens
    q_start_loc: torch.Tensor = ctx.q_start_loc
    num_tokens = int(ctx.input_ids.numel())
    is_decoding = bool(ctx.is_decoding)
    batch = q_seqlens.numel()
    multi_token_decode = is_decoding and num_tokens != batch
    max_kv = ctx.max_kv_seqlen
    if max_kv is None:
        max_kv = ctx.block_offsets.shape[1] * block_size
    if is_decoding and not multi_token_decode:
        return DlinferAttentionMetadata(
            is_decoding=True,
            block_offsets=ctx.block_offsets,
            q_start_loc=q_start_loc,
            q_seqlens=q_seqlens,
            kv_seqlens=ctx.kv_seqlens,
            quant_policy=ctx.kv_quant_policy,
            max_q_seqlen=1,
            max_kv_seqlen=int(max_kv),
            block_size=block_size,
            kv_layout=backend.kv_layout,
            unfinished=backend,
            backend=backend,
            num_tokens=batch,
        )
    kv_seqlens = ctx.kv_seqlens.to(torch.int32)
    cu_seqlens_q = torch.zeros(batch + 1, dtype=torch.int32, device=q_seqlens.device)
    torch.cumsum(q_seqlens, 0, out=cu_seqlens_q[1:])
    max_q = int(ctx.max_q_seqlen or num_tokens)
    prefill_no_cache = (not is_decoding) and int(ctx.sum_kv_seqlen) == num_tokens
    meta = DlinferAttentionMetadata(
        is_decoding=is_decoding,
        block_offsets=ctx.block_offsets.to(torch.int32),
        q_start_loc=q_start_loc,
        q_seqlens=q_seqlens,
        kv_seqlens=kv_seqlens,
        cu_seqlens_q=cu_seqlens_q,
        quant_policy=ctx.kv_quant_policy,
        # from LMDeploy's own tensors (int64 on non-CUDA devices): no int32 -> int64 round trip
        slot_mapping=slot_mapping(ctx.block_offsets, q_seqlens, ctx.kv_seqlens, q_start_loc, num_tokens, block_size,
                                  False, backend.slot_dtype),
        max_q_seqlen=max_q,
        max_kv_seqlen=int(max_kv),
        block_size=block_size,
        kv_layout=backend.kv_layout,
        prefill_no_cache=prefill_no_cache,
        multi_token_decode=multi_token_decode,
        backend=backend,
        num_tokens=num_tokens,
    )
    meta.derived_from = meta.kv_seqlens
    _derive_host_and_plan(meta, backend, num_tokens)
    return meta


def _derive_host_and_plan(meta: DlinferAttentionMetadata, backend: Backend, num_tokens: int) -> None:
    """The host mirrors (when the plugin asked for them) and the plugin's plan, from the finished fields."""
    one_token = meta.is_decoding and not meta.multi_token_decode
    if backend.host_seqlens:
        meta.cu_seqlens_q_cpu, meta.seqlens_kv_cpu = host_mirrors(
            meta.q_seqlens, meta.kv_seqlens, num_tokens, meta.max_q_seqlen, one_token=one_token,
            no_history=meta.prefill_no_cache)
    if backend.prepare_metadata is not None:
        meta.plan = backend.prepare_metadata(step_metadata(meta))


def step_metadata(meta: DlinferAttentionMetadata) -> StepMetadata:
    """The plugin-facing view of a step's metadata (``Backend.prepare_metadata``'s argument)."""
    return StepMetadata(
        cu_seqlens_q=meta.cu_seqlens_q,
        seqlens_kv=meta.kv_seqlens,
        block_table=meta.block_offsets,
        max_seqlen_q=meta.max_q_seqlen,
        max_seqlen_kv=meta.max_kv_seqlen,
        block_size=meta.block_size,
        decode=bool(meta.is_decoding and not meta.multi_token_decode),
        cu_seqlens_q_cpu=meta.cu_seqlens_q_cpu,
        seqlens_kv_cpu=meta.seqlens_kv_cpu,
    )


def host_mirrors(q_seqlens: torch.Tensor, kv_seqlens: torch.Tensor, num_tokens: int, max_q: int, *,
                 one_token: bool, no_history: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Host int32 ``cu_seqlens_q`` [B+1] and ``seqlens_kv`` [B] with at most one device-to-host copy.

    ``one_token``: one query token per sequence (offsets ``0..B``); ``no_history``: KV lengths are the query
    lengths; a batch whose ``B * max_q`` equals ``num_tokens`` has every query length ``max_q``.
    """
    batch = q_seqlens.numel()
    uniform = one_token or max_q * batch == num_tokens
    q_cpu = torch.full((batch,), 1 if one_token else max_q, dtype=torch.int32) if uniform else None
    if no_history and q_cpu is not None:
        kv_cpu = q_cpu.clone()
    elif q_cpu is not None:
        kv_cpu = kv_seqlens.to("cpu", torch.int32)
    elif no_history:
        q_cpu = q_seqlens.to("cpu", torch.int32)
        kv_cpu = q_cpu.clone()
    else:  # both, in one copy
        both = torch.stack((q_seqlens.to(torch.int32), kv_seqlens.to(torch.int32))).cpu()
        q_cpu, kv_cpu = both[0], both[1]
    cu_cpu = torch.zeros(batch + 1, dtype=torch.int32)
    torch.cumsum(q_cpu, 0, out=cu_cpu[1:])
    return cu_cpu, kv_cpu
