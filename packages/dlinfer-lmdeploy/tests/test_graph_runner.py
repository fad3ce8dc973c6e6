"""DlinferGraphRunner on fake decode steps: which forward kwargs are captured, and counted eager fallbacks.

A fake LMDeploy model (with ``CudaGraphMixin``) computes, per token, a vector from everything
the runner must deliver (token id, position, mrope rows, kv length, slot, the constant
kwargs, the embedding rows). A graphed step must return exactly what the same model returns
when called eagerly with the step's own kwargs, for fresh random inputs; replays must pass the
very tensors captured (a device graph reads only its captured addresses); a step the runner
cannot hold must run eagerly, be counted under its reason and be warned about once.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from dlinfer.plugin import Backend
from lmdeploy.pytorch.models.utils.cudagraph import CudaGraphMixin

from dlinfer_lmdeploy import graph_runner as gr
from dlinfer_lmdeploy.metadata import DlinferAttentionMetadata
from dlinfer_lmdeploy.testing.host_graph import bare_backend

BLOCK = 16
WIDTH = 4  # block-table width of the fake steps
HIDDEN = 3


class _Ctx:
    def __init__(self) -> None:
        self.decoding = True

    def global_is_decoding(self) -> bool:
        return self.decoding


class _CtxMgr:
    def __init__(self) -> None:
        self.ctx = _Ctx()

    def current_context(self) -> _Ctx:
        return self.ctx


class FakeVLM(torch.nn.Module, CudaGraphMixin):
    """out[0, t] = [id, pos, mrope rows, kv_len, slot, token id const, flag, embeds...] as float64."""

    def __init__(self) -> None:
        super().__init__()
        self.ctx_mgr = _CtxMgr()
        self.calls: list[dict[str, Any]] = []

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        past_key_values: Any,
        attn_metadata: DlinferAttentionMetadata,
        inputs_embeds: torch.Tensor | None = None,
        mrope_position_ids: torch.Tensor | None = None,
        image_token_id: int | None = None,
        pixel_values: torch.Tensor | None = None,
        context: Any = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        self.calls.append(
            dict(
                input_ids=input_ids,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                mrope_position_ids=mrope_position_ids,
                attn_metadata=attn_metadata,
                context=context,
            )
        )
        t = input_ids.shape[-1]
        cols = [input_ids.view(t), position_ids.view(t)]
        mrope = mrope_position_ids if mrope_position_ids is not None else torch.full((3, t), -7)
        cols += list(mrope[:, :t])
        cols += [attn_metadata.kv_seqlens[:t], attn_metadata.slot_mapping[:t]]
        cols += [torch.full((t,), -1 if image_token_id is None else image_token_id)]
        cols += [torch.full((t,), float(pixel_values is not None) + 2 * float(context is not None))]
        out = torch.stack([c.to(torch.float64) for c in cols], dim=-1)
        emb = inputs_embeds[0] if inputs_embeds is not None else torch.zeros(t, HIDDEN)
        return torch.cat([out, emb.to(torch.float64)], dim=-1)[None]


def _runner(model: FakeVLM, max_batches: int = 4, plugin: Backend | None = None) -> gr.DlinferGraphRunner:
    plugin = plugin or bare_backend("fakegraph")
    cache = SimpleNamespace(
        kernel_block_size=None,
        block_size=BLOCK,
        num_gpu_blocks=64,
        cudagraph_capture_batch_sizes=None,
        max_batches=max_batches,
    )
    model_config = SimpleNamespace(hf_config=SimpleNamespace(max_position_embeddings=BLOCK * 8))
    backend_config = SimpleNamespace(eager_mode=False)
    return gr.DlinferGraphRunner(
        model, model_config, cache, backend_config, torch.device("cpu"), plugin=plugin, ops_backend=object
    )


def _step(batch: int, gen: torch.Generator, decoding: bool = True, width: int = WIDTH, **extra: Any) -> dict[str, Any]:
    """Fresh random decode-step kwargs for ``batch`` sequences (one token each) over ``width`` table columns."""
    kv = torch.randint(max(1, BLOCK * (width - 1)), BLOCK * width, (batch,), generator=gen, dtype=torch.int32)
    blocks = torch.randint(0, 64, (batch, width), generator=gen, dtype=torch.int32)
    pos = kv.long() - 1
    meta = DlinferAttentionMetadata(
        is_decoding=decoding,
        block_offsets=blocks,
        q_start_loc=torch.arange(batch),
        q_seqlens=torch.ones(batch, dtype=torch.long),
        kv_seqlens=kv,
        cu_seqlens_q=torch.arange(batch + 1, dtype=torch.int32),
        slot_mapping=blocks.long().gather(1, (pos // BLOCK)[:, None])[:, 0] * BLOCK + pos % BLOCK,
        block_size=BLOCK,
    )
    kwargs = dict(
        input_ids=torch.randint(0, 1000, (1, batch), generator=gen),
        position_ids=pos[None].clone(),
        past_key_values=[],
        attn_metadata=meta,
    )
    kwargs.update(extra)
    return kwargs


def _eager(model: FakeVLM, kwargs: dict[str, Any]) -> torch.Tensor:
    return model(**kwargs)


def _check(runner: gr.DlinferGraphRunner, model: FakeVLM, kwargs: dict[str, Any]) -> None:
    want = _eager(model, kwargs)
    got = runner(**kwargs)
    assert got.shape == want.shape
    assert torch.equal(got, want), (got, want)


def _mrope(batch: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 500, (3, batch), generator=gen)


def test_decode_extras_are_captured_and_replayed_from_fixed_buffers(caplog: pytest.LogCaptureFixture) -> None:
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    model = FakeVLM()
    runner = _runner(model)
    before = gr.step_counts()
    vlm_nones = dict(pixel_values=None, vis_cu_seqlens=None, vis_pos_emb=None, image_mask=None, inputs_embeds=None)
    with caplog.at_level(logging.WARNING, logger="dlinfer_lmdeploy"), gr.counting() as counts:
        # Qwen2-VL decode: mrope [3, B] and None vision kwargs; batches 3 and 4 share bucket 4.
        for batch in (3, 4, 3, 1, 4):
            _check(runner, model, _step(batch, gen, mrope_position_ids=_mrope(batch, gen), **vlm_nones))
        # InternVL decode: constants (None image token id) and the step context itself.
        for batch in (3, 4):
            kw = _step(batch, gen, pixel_values=None, image_mask=None, image_token_id=None, inputs_embeds=None)
            _check(runner, model, dict(kw, context=model.ctx_mgr.ctx))
        # A constant is part of the capture key: another value never replays the first graph.
        for token_id in (5, 9, 5):
            _check(runner, model, _step(2, gen, image_token_id=token_id))
        # Decode-shaped input embeddings are held like ids.
        for batch in (1, 3):
            _check(runner, model, _step(batch, gen, inputs_embeds=torch.randn(1, batch, HIDDEN, generator=gen)))
    assert counts.eager_decode == 0, counts.eager
    assert counts.graphed == 5 + 2 + 3 + 2
    assert runner.eager_decode_steps == 0 and runner.graphed_steps == 12
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # buckets 1 and 4 for the mrope signature, 4 for InternVL's, 2 for each image token id, 1 and 4 for embeds
    assert len(runner.captured) == 2 + 1 + 2 + 2
    total = gr.step_counts().since(before)
    assert total.graphed == counts.graphed and total.eager_decode == 0
    assert runner in gr.live_runners()


def test_contexts_past_max_position_embeddings_are_graphed() -> None:
    """A context longer than the model's max_position_embeddings (8 blocks here; session_len is the real limit)
    widens the captured block table to the next power of two of blocks, up to the whole cache (64 blocks), and
    replays a graph: the graphs of the narrower table are dropped, never replayed with a table they do not hold."""
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    model = FakeVLM()
    runner = _runner(model)
    assert runner.max_blocks == 8
    with gr.counting() as counts:
        for batch, width in ((2, 4), (2, 8), (3, 40), (1, 64), (2, 9), (3, 4)):
            _check(runner, model, _step(batch, gen, width=width))
            assert all(e.meta.block_offsets.shape[1] == runner.max_blocks for e in runner.captured.values())
    assert counts.eager_decode == 0, counts.eager
    assert counts.graphed == 6
    assert runner.max_blocks == 64 and runner.table_growths == 1
    # buckets 1, 2 and 4 captured after the growth to 64 blocks (2 and 4 again)
    assert sorted(key[0] for key in runner.captured) == [1, 2, 4]
    with gr.counting() as counts:  # wider than the cache: impossible in LMDeploy, refused to the eager path
        _check(runner, model, _step(1, gen, width=65))
    assert counts.eager == {"block table": 1}


def test_replay_uses_captured_tensors_only() -> None:
    """Every graphed call of one capture key gets the same tensor objects (a graph cannot see new ones)."""
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    model = FakeVLM()
    runner = _runner(model)
    for batch in (3, 4, 3):  # one bucket (4)
        runner(**_step(batch, gen, mrope_position_ids=_mrope(batch, gen)))
    graphed = model.calls  # warm-up and capture of batch 3, replays of 4 and 3: all from the buffers
    assert len(graphed) == 4
    for name in ("input_ids", "position_ids", "mrope_position_ids", "attn_metadata"):
        assert len({id(call[name]) for call in graphed}) == 1, name


def test_unknown_kwargs_fall_back_counted_and_warned(caplog: pytest.LogCaptureFixture) -> None:
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    model = FakeVLM()
    runner = _runner(model)
    with caplog.at_level(logging.WARNING, logger="dlinfer_lmdeploy"), gr.counting() as counts:
        for batch in (2, 3):  # a tensor the runner cannot hold
            _check(runner, model, _step(batch, gen, pixel_values=torch.randn(batch, 4, generator=gen)))
        _check(runner, model, _step(2, gen, context=object()))  # not the step context
        _check(runner, model, _step(3, gen, mrope_position_ids=_mrope(5, gen)))  # not decode-shaped
        _check(runner, model, _step(5, gen))  # above the largest capture size (4)
        _check(runner, model, _step(3, gen, decoding=False))  # prefill: eager by design
        model.ctx_mgr.ctx.decoding = False  # another rank prefills
        _check(runner, model, _step(2, gen))
    assert runner.captured == {}
    assert counts.graphed == 0
    assert counts.eager == {
        "kwarg pixel_values": 2,
        "kwarg context": 1,
        "kwarg mrope_position_ids": 1,
        "batch size": 1,
        gr.PREFILL: 1,
        "rank not decoding": 1,
    }
    assert counts.eager_decode == 6 and counts.prefill == 1
    assert counts.as_dict() == {"graphed": 0, "eager_decode": 6, "eager": dict(counts.eager)}
    assert runner.eager_steps == counts.eager and runner.eager_decode_steps == 6
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 5, warnings  # once per fallback reason, none for prefill
    assert sum("pixel_values = Tensor" in w for w in warnings) == 1
    assert any("batch 5 above the largest capture size 4" in w for w in warnings)


def test_model_without_mixin_or_declining_runs_eagerly_counted() -> None:
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)

    class Declines(FakeVLM):
        def support_cuda_graph(self, *args: Any, **kwargs: Any) -> bool:
            return False

    model = Declines()
    runner = _runner(model)
    _check(runner, model, _step(2, gen))
    assert runner.eager_steps == {"model": 1} and runner.captured == {}


def test_model_extra_graph_key_selects_the_graph() -> None:
    """A model's own ``get_cudagraph_extra_key`` (LMDeploy's hook) is part of the capture key."""
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)

    class Keyed(FakeVLM):
        variant = 0

        def get_cudagraph_extra_key(self, **kwargs: Any) -> tuple:
            return (self.variant,)

    model = Keyed()
    runner = _runner(model)
    for variant in (0, 1, 0):
        model.variant = variant
        _check(runner, model, _step(3, gen, mrope_position_ids=_mrope(3, gen)))
    assert sorted(key[2:] for key in runner.captured) == [(0,), (1,)]
    assert runner.graphed_steps == 3 and runner.eager_decode_steps == 0


def test_full_bucket_replay_dispatches_no_padding_ops() -> None:
    """A decode step that fills its capture bucket (batch 1 in bucket 1, 4 in 4) refills the fixed buffers with
    copies only: no zero/fill of an empty padding slice (host time on the critical path of batch-1 decode). A
    partial bucket still pads, and both replay what eager mode computes."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN202
            self.names.append(func.__name__.split(".")[0])
            return func(*args, **(kwargs or {}))

    gen = torch.Generator().manual_seed(5)
    model = FakeVLM()
    runner = _runner(model)
    for batch in (1, 4, 3):  # capture buckets 1, 4; 3 replays bucket 4 with a padding row
        _check(runner, model, _step(batch, gen))
    fills = {"zero_", "fill_"}
    for batch, padded in ((1, False), (4, False), (3, True)):
        kwargs = _step(batch, gen)
        key, _ = runner._plan(kwargs)
        with Ops() as ops:
            runner._fill(runner.captured[key], kwargs)
        assert bool(fills & set(ops.names)) == padded, (batch, ops.names)
        _check(runner, model, kwargs)


_VIEWS = frozenset({"slice", "view", "select", "unsqueeze", "squeeze", "alias", "expand", "_unsafe_view",
                    "as_strided", "t", "transpose", "detach"})


class _Ops:
    """Aten ops dispatched inside the block that may launch a kernel (views left out)."""

    def __enter__(self) -> list[str]:
        from torch.utils._python_dispatch import TorchDispatchMode

        names: list[str] = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN202
                name = func.__name__.split(".")[0]
                if name not in _VIEWS:
                    names.append(name)
                return func(*args, **(kwargs or {}))

        self.mode = Mode()
        self.mode.__enter__()
        return names

    def __exit__(self, *exc: object) -> None:
        self.mode.__exit__(*exc)


def test_padding_rows_write_nothing_and_read_one_position() -> None:
    """After a replay of 3 sequences in bucket 4 that held 4 before: row 3 has token 0, position 0, KV length 1
    and slot -1 (nothing written to the cache), rows 0-2 the step's values and the oracle's slots."""
    gen = torch.Generator().manual_seed(9)
    model = FakeVLM()
    runner = _runner(model)
    _check(runner, model, _step(4, gen))
    kwargs = _step(3, gen)
    _check(runner, model, kwargs)
    (entry,) = runner.captured.values()
    meta = entry.meta
    assert meta.slot_mapping[3:].tolist() == [-1] and meta.kv_seqlens[3:].tolist() == [1]
    assert entry.buffers["input_ids"][0, 3:].tolist() == [0] == entry.buffers["position_ids"][0, 3:].tolist()
    assert meta.slot_mapping[:3].tolist() == kwargs["attn_metadata"].slot_mapping.tolist()


def test_declared_fill_kernel_refills_the_step_alone() -> None:
    """A plugin that declares ``DeviceGraph.fill_decode_inputs`` gets one call per graphed step (capture and
    replays) with LMDeploy's tensors and the entry's buffers; the runner then dispatches no aten op of its own to
    refill them (without it, the torch composition: 4 copies and the slot arithmetic). Replays stay exact."""
    import dataclasses

    from dlinfer.graph_inputs import fill_decode_inputs

    calls: list[int] = []

    def kernel(input_ids, position_ids, block_table, seqlens_kv, buffers, *, block_size, pad=True):  # noqa: ANN001, ANN202
        calls.append(input_ids.numel())
        with torch.utils._python_dispatch._disable_current_modes():  # the "kernel": not the runner's own ops
            fill_decode_inputs(input_ids, position_ids, block_table, seqlens_kv, buffers, block_size=block_size)

    base = bare_backend("fusedfill")
    plugin = dataclasses.replace(base, graph=dataclasses.replace(base.graph, fill_decode_inputs=kernel))
    gen = torch.Generator().manual_seed(13)
    model = FakeVLM()
    runner = _runner(model, plugin=plugin)
    plain = _runner(FakeVLM())
    for batch in (1, 3, 4, 2):
        _check(runner, model, _step(batch, gen))
        _check(plain, plain.model, _step(batch, gen))
    assert calls == [1, 3, 4, 2]
    for r, most in ((runner, 0), (plain, 10)):  # a full bucket: no padding rows to reset
        kwargs = _step(4, gen)
        key, _ = r._plan(kwargs)
        with _Ops() as ops:
            r._fill(r.captured[key], kwargs)
        assert len(ops) <= most, (r.plugin.name, ops)
        assert ("copy_" in ops) == (most > 0), ops
