"""LMDeploy's ray executor on the CPU device: tp=2 over a local ray cluster == HF greedy (fp32).

The engine runs in a child process with a deadline (``generate_cli.run``) and without the autoload ``.pth`` hook, so
the two ray workers wire dlinfer in only through the adaptor's actor class (``ray-worker-class``). The local cluster
is started by the engine (``RAY_ADDRESS=local``: never someone else's), with a small object store. The end-to-end
tests need ray (the ``ray`` extra; nox session ``tests-ray``); the checks of the ray mapping without an engine, and
the refusal without ray, run everywhere.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import textwrap
import time

import pytest

from dlinfer_lmdeploy import devices, hooks
from dlinfer_lmdeploy.testing import generate_cli

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="ray is not installed (pip install 'dlinfer-lmdeploy[ray]')")

DEADLINE_S = 300

RAY_ENV = {
    "DLINFER_LMDEPLOY_AUTOLOAD": "0",  # the workers must not rely on the .pth hook
    "RAY_ADDRESS": "local",  # a new local cluster, started by the engine and shut down with it
    "RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES": str(200 * 10**6),
    "RAY_memory_monitor_refresh_ms": "0",  # shared CI box: ray must not kill workers on host memory pressure
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
}


def test_ray_without_ray_installed_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(ImportError, match=r"distributed_executor_backend='ray' on dlinfer device 'cpu' needs ray.*"
                                          r"dlinfer-lmdeploy\[ray\]"):
        hooks._install_ray("cpu")


def test_ray_supported_only_where_ray_is_installed() -> None:
    from dlinfer_lmdeploy.ops_backend import ops_backend_for

    assert ops_backend_for("cpu").support_ray() is HAS_RAY


@needs_ray
def test_ray_resources_and_worker_class() -> None:
    """The mapping each device's workers ask ray for, and the actor class ray pickles by reference to this package."""
    from lmdeploy.pytorch import ray as lmdeploy_ray
    from lmdeploy.pytorch.engine.executor import ray_executor
    from ray import cloudpickle

    from dlinfer_lmdeploy import ray_workers

    ray_workers.install()
    assert ray_executor.RayWorkerWrapper is ray_workers.DlinferRayWorker
    assert ray_executor.get_device_str is lmdeploy_ray.get_device_str  # the by-name binding was rebound
    assert ray_executor.get_device_str("cpu") == ray_workers.HOST_RESOURCE
    assert ray_executor.get_device_str("cuda") == "GPU"  # LMDeploy's own device: the original
    for name in devices.devices():
        if name in ("maca", "ascend", "camb"):
            assert ray_workers.ray_resource(name) == {"maca": "GPU", "ascend": "NPU", "camb": "MLU"}[name]
    blob = cloudpickle.dumps(ray_workers.DlinferRayWorker)
    assert b"dlinfer_lmdeploy.ray_workers" in blob and len(blob) < 1000  # by reference: the worker imports us
    assert issubclass(ray_workers.DlinferRayWorker, ray_workers.DlinferRayWorker.__dlinfer_original__)


@needs_ray
def test_visible_ordinal(monkeypatch: pytest.MonkeyPatch) -> None:
    from dlinfer_lmdeploy import ray_workers

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # ray narrowed the worker to its assigned GPU 1
    assert ray_workers._visible_ordinal("GPU", "1") == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert ray_workers._visible_ordinal("GPU", "6") == 2
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")  # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES: all visible
    assert ray_workers._visible_ordinal("GPU", "3") == 3


class _FakeAgent:
    """The part of LMDeploy's model agent the worker counts: its loop awaits ``_async_step`` once per step."""

    def __init__(self, release: asyncio.Event) -> None:
        self.release = release
        self.done = 0

    async def _async_step(self, **inputs: object) -> None:
        await self.release.wait()
        self.done += 1


def _fake_worker(monkeypatch: pytest.MonkeyPatch, release: asyncio.Event) -> tuple[object, list[int]]:
    """A DlinferRayWorker on the cpu device whose LMDeploy parts are fakes: forward_async queues a step for the
    loop (here a task); stop_async, and wait_tasks when cancelled, record how many steps had finished when
    LMDeploy's cancel of the loop ran."""
    from dlinfer_lmdeploy import ray_workers

    parent = ray_workers.DlinferRayWorker.__bases__[0]  # LMDeploy's RayWorkerWrapper
    seen_at_stop: list[int] = []

    async def forward_async(self, inputs):  # type: ignore[no-untyped-def]
        self._fake_tasks.append(asyncio.get_running_loop().create_task(self.model_agent._async_step(**inputs)))

    async def stop_async(self):  # type: ignore[no-untyped-def]
        seen_at_stop.append(self.model_agent.done)
        for task in self._fake_tasks:
            task.cancel()

    async def wait_tasks(self):  # type: ignore[no-untyped-def]
        try:  # LMDeploy's waits on the model loop for good and cancels it when itself cancelled
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await stop_async(self)
            raise

    monkeypatch.setattr(parent, "start", lambda self: None)
    monkeypatch.setattr(parent, "wait_tasks", wait_tasks)
    monkeypatch.setattr(parent, "forward_async", forward_async)
    monkeypatch.setattr(parent, "stop_async", stop_async)
    worker = object.__new__(ray_workers.DlinferRayWorker)
    worker.__dict__.update(device_type="cpu", rank=1, model_agent=_FakeAgent(release), _fake_tasks=[],
                           _steps_received=0, _steps_finished=0, _counting_steps=False)
    worker.start()
    return worker, seen_at_stop


@needs_ray
def test_stop_finishes_the_received_steps_before_cancelling(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rank cancelled inside a step leaves its peers blocked in that step's collectives (gloo, host device)."""

    async def scenario() -> list[int]:
        release = asyncio.Event()
        worker, seen_at_stop = _fake_worker(monkeypatch, release)
        for _ in range(3):
            await worker.forward_async({})
        asyncio.get_running_loop().call_later(0.05, release.set)  # the steps finish after stop was asked for
        await worker.stop_async()
        return seen_at_stop

    assert asyncio.run(scenario()) == [3]


@needs_ray
def test_cancelled_wait_finishes_the_received_steps_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Engine stop: LMDeploy's executor cancels every worker's wait_tasks, which cancels the model loop."""

    async def scenario() -> list[int]:
        release = asyncio.Event()
        worker, seen_at_cancel = _fake_worker(monkeypatch, release)
        waiting = asyncio.ensure_future(worker.wait_tasks())
        for _ in range(2):
            await worker.forward_async({})
        await asyncio.sleep(0.01)
        waiting.cancel()  # as ray.cancel does
        asyncio.get_running_loop().call_later(0.05, release.set)
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return seen_at_cancel

    assert asyncio.run(scenario()) == [2]


@needs_ray
def test_stop_gives_up_waiting_and_says_so(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from dlinfer_lmdeploy import ray_workers

    monkeypatch.setattr(ray_workers, "STOP_DRAIN_S", 0.05)

    async def scenario() -> list[int]:
        worker, seen_at_stop = _fake_worker(monkeypatch, asyncio.Event())  # never released: a hung step
        await worker.forward_async({})
        await worker.stop_async()
        return seen_at_stop

    with caplog.at_level("WARNING", logger="dlinfer_lmdeploy"):
        assert asyncio.run(scenario()) == [0]  # LMDeploy's stop still ran
    assert "rank 1: stops with 1 of 1 received steps unfinished" in caplog.text
    assert "the 0 s limit" in caplog.text  # STOP_DRAIN_S = 0.05: the limit, not a dead loop


@needs_ray
def test_stop_does_not_wait_on_a_dead_model_loop(monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """A model loop that already ended (a failed step) finishes nothing: stop at once, not after STOP_DRAIN_S."""
    from dlinfer_lmdeploy import ray_workers

    monkeypatch.setattr(ray_workers, "STOP_DRAIN_S", 30.0)

    async def scenario() -> tuple[list[int], float]:
        worker, seen_at_stop = _fake_worker(monkeypatch, asyncio.Event())
        await worker.forward_async({})
        dead = asyncio.get_running_loop().create_future()
        dead.set_exception(RuntimeError("step failed"))
        dead.exception()  # retrieved: no "never retrieved" warning
        worker.model_agent._background_task = dead
        t0 = time.monotonic()
        await worker.stop_async()
        return seen_at_stop, time.monotonic() - t0

    with caplog.at_level("WARNING", logger="dlinfer_lmdeploy"):
        seen, elapsed = asyncio.run(scenario())
    assert seen == [0] and elapsed < 5.0, (seen, elapsed)
    assert "its model loop had ended" in caplog.text


@needs_ray
def test_worker_counts_the_step_lmdeploy_awaits() -> None:
    """The counted method is the one LMDeploy's model loop awaits once per step (inventory: ray-worker-class)."""
    import inspect

    from lmdeploy.pytorch.engine.model_agent import agent

    loop_src = inspect.getsource(agent.BaseModelAgent._async_loop_background)
    assert "self._async_step(" in loop_src, "LMDeploy's model loop no longer awaits _async_step: update ray_workers"
    start_src = inspect.getsource(agent.BaseModelAgent.start)
    assert "self._background_task = " in start_src, "the model loop task moved: update ray_workers._loop_running"


@needs_ray
@pytest.mark.e2e
@pytest.mark.tp2
@pytest.mark.parametrize("kind", ["llama", "qwen2_moe"])
def test_ray_tp2_matches_hf(kind, tiny_model, hf_greedy):  # type: ignore[no-untyped-def]
    path = tiny_model(kind)
    prompts = ["Hello world", "The quick brown fox jumps over the lazy dog."]
    try:
        result = generate_cli.run(path, 8, {"tp": 2, "distributed_executor_backend": "ray"}, prompts,
                                  deadline_s=DEADLINE_S, env={**os.environ, **RAY_ENV})
    except (generate_cli.GenerationTimeout, RuntimeError) as exc:
        pytest.fail(str(exc))
    assert result["output_ids"] == hf_greedy(path, result["input_ids"], 8)


_KILL_A_RAY_WORKER = textwrap.dedent("""
    import os, signal, sys, time
    import dlinfer_lmdeploy, ray
    from dlinfer_lmdeploy.testing import runner
    from lmdeploy import GenerationConfig, pipeline
    pipe = pipeline(sys.argv[1], backend_config=runner.engine_config(tp=2, distributed_executor_backend="ray"),
                    log_level="ERROR")
    print("GENERATED", runner.generate(pipe, ["Hello world"], 4), flush=True)
    worker = pipe.async_engine.engine.executor.workers[1]
    pid = ray.get(worker.dlinfer_bind_device.remote())["pid"]
    os.kill(pid, signal.SIGKILL)  # as the OOM killer would
    print("KILLED", pid, flush=True)
    t = time.monotonic()
    gen = GenerationConfig(max_new_tokens=4, do_sample=False, top_k=1, ignore_eos=True)
    out = pipe(["Hello again"], gen_config=gen, do_preprocess=False)[0]
    print("AFTER", out.finish_reason, len(out.token_ids), round(time.monotonic() - t, 1), flush=True)
""")


@needs_ray
@pytest.mark.e2e
@pytest.mark.tp2
def test_ray_killed_worker_stops_the_engine(tiny_model):  # type: ignore[no-untyped-def]
    """A ray worker killed from outside: the next request ends at once with an error, not a hang or tokens."""
    from dlinfer_lmdeploy.testing.child import run_command

    rc, out, err = run_command([sys.executable, "-c", _KILL_A_RAY_WORKER, str(tiny_model("llama"))],
                               deadline_s=DEADLINE_S, env={**os.environ, **RAY_ENV},
                               what="generation after a ray worker was killed")  # a hang raises with the stacks
    assert "GENERATED" in out and "KILLED" in out, f"rc={rc}\n{out[-2000:]}\n{err[-3000:]}"
    after = next(ln for ln in out.splitlines() if ln.startswith("AFTER")).split()
    assert after[1] not in ("length", "stop") and int(after[2]) < 4, after  # no normal completion
    assert float(after[3]) < 60, after
    assert "ActorDiedError" in err or "actor died" in (err + out).lower(), err[-3000:]
