"""A third-party dlinfer plugin, registered in the test through a real entry point, becomes an LMDeploy device.

The toy plugin runs on the CPU but declares a different form from the reference backend:
HND KV layout, block size 16 only, host-side sequence lengths, int32 slots, a per-step plan. Its ops check
that the adaptor delivers exactly that form, count their calls, and compute with the
reference implementation, so generation must still equal HF greedy.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from dlinfer_lmdeploy.testing import runner

PLUGIN_SOURCE = textwrap.dedent(
    """
    import collections
    import contextlib
    import functools

    import torch
    from dlinfer.plugin import Backend, DeviceGraph, hookimpl

    CALLS = collections.Counter()
    PROBLEMS = []


    def _checked(name, fn):
        @functools.wraps(fn)
        def op(*args, **kwargs):
            CALLS[name] += 1
            if name == "fill_kv_cache":
                key_cache, slots = args[2], args[4]
                if slots.dtype != torch.int32:
                    PROBLEMS.append(f"slot dtype {slots.dtype}")
                if key_cache.shape[2] != 16:
                    PROBLEMS.append(f"cache not HND with block 16: {tuple(key_cache.shape)}")
                if kwargs.get("kv_layout") != "HND":
                    PROBLEMS.append(f"kv_layout {kwargs.get('kv_layout')}")
            if name in ("paged_decode_attention", "paged_prefill_attention"):
                seqlens = args[4] if name == "paged_decode_attention" else args[5]
                host = kwargs.get("seqlens_kv_cpu")
                if host is None or host.device.type != "cpu" or not torch.equal(host, seqlens.cpu()):
                    PROBLEMS.append(f"{name}: seqlens_kv_cpu {host!r} != {seqlens!r}")
            if name == "prefill_attention" and kwargs.get("cu_seqlens_q_cpu") is None:
                PROBLEMS.append("prefill_attention without cu_seqlens_q_cpu")
            if name in ("prefill_attention", "paged_decode_attention", "paged_prefill_attention"):
                plan = kwargs.get("plan")
                lengths = {"prefill_attention": (3, "cu_seqlens_q"), "paged_decode_attention": (4, "seqlens_kv"),
                           "paged_prefill_attention": (5, "seqlens_kv")}[name]
                if not isinstance(plan, Plan) or getattr(plan.step, lengths[1]) is not args[lengths[0]]:
                    PROBLEMS.append(f"{name}: plan {plan!r} is not this step's")
                else:
                    CALLS["planned"] += 1
            return fn(*args, **kwargs)

        return op


    class Plan:
        # once per step (Backend.prepare_metadata); the graph runner refreshes the plan of its fixed buffers
        def __init__(self, step):
            CALLS["plans"] += 1
            self.step = step

        def refresh(self):
            CALLS["plan_refreshed"] += 1


    def _load_ops():
        from dlinfer.reference.ops import OPS

        return {name: _checked(name, fn) for name, fn in OPS.items()}


    class RerunGraph:
        # host stand-in for a device graph: the adaptor re-runs the forward from its fixed buffers

        rerun_instead_of_replay = True

        def __init__(self):
            CALLS["graph_created"] += 1


    def _capture(graph, pool=None, stream=None):
        CALLS["graph_captured"] += 1
        return contextlib.nullcontext()


    @hookimpl
    def dlinfer_backend():
        return Backend(
            name="toyvendor",
            device_type="cpu",
            api_version=">=1.0,<2",
            is_available=lambda: True,
            load_ops=_load_ops,
            kv_layout="HND",
            block_sizes=(16,),
            host_seqlens=True,
            prepare_metadata=Plan,
            slot_dtype=torch.int32,
            dist_backend="gloo",
            graph=DeviceGraph(graph_factory=RerunGraph, capture=_capture),
            description="test-only plugin",
        )
    """
)


@pytest.fixture
def toy_plugin(tmp_path: Path):  # type: ignore[no-untyped-def]
    from dlinfer.registry import REGISTRY

    (tmp_path / "toyvendor_plugin.py").write_text(PLUGIN_SOURCE)
    dist = tmp_path / "toyvendor_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toyvendor-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[dlinfer.backends]\ntoyvendor = toyvendor_plugin\n")
    sys.path.insert(0, str(tmp_path))
    REGISTRY.discover(force=True)
    try:
        yield sys.modules.get("toyvendor_plugin") or __import__("toyvendor_plugin")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("toyvendor_plugin", None)
        REGISTRY.discover(force=True)


def test_plugin_device_is_wired(toy_plugin):  # type: ignore[no-untyped-def]
    from lmdeploy import PytorchEngineConfig
    from lmdeploy.cli.utils import ArgumentHelper
    from lmdeploy.pytorch.backends.selector import get_backend

    import dlinfer_lmdeploy

    assert "toyvendor" in dlinfer_lmdeploy.lmdeploy_devices()
    backend = get_backend("toyvendor")
    assert backend.plugin.name == "toyvendor"
    assert backend.get_k_block_shape(16, 2, 8, None) == (2, 16, 8)
    with pytest.raises(ValueError, match=r"block sizes \(16,\)"):
        backend.get_k_block_shape(32, 2, 8, None)
    cfg = PytorchEngineConfig(device_type="toyvendor")
    assert cfg.block_size == 16  # the default 64 is not served by the plugin
    with pytest.raises(ValueError, match="supports block sizes"):
        PytorchEngineConfig(device_type="toyvendor", block_size=32)
    import argparse

    parser = argparse.ArgumentParser()
    ArgumentHelper.device(parser)
    assert parser.parse_args(["--device", "toyvendor"]).device == "toyvendor"


@pytest.mark.e2e
def test_plugin_generates_like_hf(toy_plugin, tiny_model, hf_greedy):  # type: ignore[no-untyped-def]
    path = tiny_model("llama")
    prompts = ["Hello world", "The quick brown fox jumps over the lazy dog."]
    prefix = "In a hole in the ground there lived a hobbit, not a nasty dirty wet hole. "
    cfg = runner.engine_config("toyvendor", enable_prefix_caching=True)
    with runner.open_pipeline(path, cfg) as pipe:
        ids = [runner.encode(pipe, p) for p in prompts]
        assert runner.generate(pipe, prompts, 10) == hf_greedy(path, ids, 10)
        for p in (prefix + "Filled with", prefix + "It was a hobbit-hole"):
            assert runner.generate(pipe, [p], 6) == hf_greedy(path, [runner.encode(pipe, p)], 6)
    assert toy_plugin.PROBLEMS == []
    for op in ("fill_kv_cache", "prefill_attention", "paged_decode_attention", "paged_prefill_attention", "linear"):
        assert toy_plugin.CALLS[op] > 0, op
    attention = sum(toy_plugin.CALLS[op] for op in ("prefill_attention", "paged_decode_attention",
                                                    "paged_prefill_attention"))
    assert toy_plugin.CALLS["planned"] == attention  # every attention call got its step's plan
    assert 0 < toy_plugin.CALLS["plans"] < attention  # once per step, not per layer


@pytest.mark.e2e
def test_plugin_graph_mode_matches_hf(toy_plugin, tiny_model, hf_greedy):  # type: ignore[no-untyped-def]
    """eager_mode=False: decode steps run from fixed, padded buffers (batch 3 -> bucket 4, slot -1 padding)."""
    path = tiny_model("qwen2")
    prompts = ["Hello world", "The quick brown fox jumps over the lazy dog.", "Far away"]
    cfg = runner.engine_config("toyvendor", eager_mode=False, max_batch_size=4)
    toy_plugin.CALLS.clear()
    from dlinfer_lmdeploy import graph_runner

    with graph_runner.counting() as steps, runner.open_pipeline(path, cfg) as pipe:
        ids = [runner.encode(pipe, p) for p in prompts]
        assert runner.generate(pipe, prompts, 10) == hf_greedy(path, ids, 10)
        assert runner.generate(pipe, prompts[:1], 10) == hf_greedy(path, ids[:1], 10)
    assert toy_plugin.PROBLEMS == []
    assert steps.eager_decode == 0 and steps.graphed >= 9 + 9 and steps.prefill >= 2, steps
    assert toy_plugin.CALLS["graph_captured"] >= 2  # buckets 1 and 4 at least
    assert toy_plugin.CALLS["graph_created"] == toy_plugin.CALLS["graph_captured"]
    assert toy_plugin.CALLS["plan_refreshed"] >= steps.graphed  # rebuilt over the refilled buffers before each


def _declared(**kw: object):  # type: ignore[no-untyped-def]
    from dlinfer.plugin import Backend

    return Backend(name="toyvendor", device_type="cpu", api_version=">=1.0,<2", is_available=lambda: True,
                   load_ops=dict, **kw)  # type: ignore[arg-type]


def test_framework_settings_are_typed_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    """The LMDeploy device name and the ray resource come from ``Backend.framework``; ``extras`` decides nothing."""
    from dlinfer.plugin import FrameworkSettings

    from dlinfer_lmdeploy import devices

    typed = _declared(framework=FrameworkSettings(lmdeploy_device="toydev", ray_resource="TOY"))
    assert devices.lmdeploy_name(typed) == "toydev"
    untyped = _declared(extras={"lmdeploy_device": "toydev", "ray_resource": "TOY"})
    assert devices.lmdeploy_name(untyped) == "toyvendor"  # display-only


def test_ray_resource_is_a_typed_field(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray")
    from types import SimpleNamespace

    from dlinfer.plugin import FrameworkSettings

    from dlinfer_lmdeploy import devices, ray_workers

    typed = _declared(framework=FrameworkSettings(ray_resource="TOY"))
    untyped = _declared(extras={"ray_resource": "TOY"})
    for backend, want in ((typed, "TOY"), (untyped, ray_workers.HOST_RESOURCE)):
        monkeypatch.setattr(devices, "get", lambda name, b=backend: SimpleNamespace(backend=b, on_host=True))
        assert ray_workers.ray_resource("toyvendor") == want
