"""LMDeploy's ray executor on dlinfer devices (the ``ray`` extra): wired workers, the device's ray resource.

Four replacements (inventory patches ``ray-device-resource``, ``ray-cluster-init``, ``ray-worker-class``,
``ray-device-binding``), applied on demand by :func:`install` when an engine for a dlinfer device is built with
``distributed_executor_backend="ray"`` (importing this module imports ``ray``; the adaptor never does otherwise):

* **The device's ray resource.** LMDeploy maps ``cuda``/``maca`` to ray's ``GPU``, ``ascend`` to ``NPU``, ``camb``
  to ``MLU`` and refuses any other name. A dlinfer device uses its plugin's ``Backend.framework.ray_resource`` when
  declared, LMDeploy's own name for ``maca``/``ascend``/``camb``, ``GPU`` for a plugin whose torch device is
  ``cuda``, and :data:`HOST_RESOURCE` for the CPU device (ray forbids ``CPU`` as a custom resource).
* **A local cluster with that resource.** When no ray cluster is running, LMDeploy starts one with ``num_cpus`` only;
  for a host device it is started with :data:`HOST_RESOURCE` = tp as well (a cluster started with ``ray start``
  declares it itself: ``--resources '{"dlinfer_host": N}'``).
* **Every worker imports the adaptor.** A ray worker process imports only what unpickling the actor class needs;
  LMDeploy's ``RayWorkerWrapper`` lives in LMDeploy, so the worker would never wire dlinfer in (``maca``: LMDeploy's
  own ``try_import_deeplink`` exits with ``No module named 'dlinfer.framework'``; ``cpu``: ``Unsupported device
  type``). The actor class becomes :class:`DlinferRayWorker`, a subclass defined here: unpickling it imports
  ``dlinfer_lmdeploy`` (install, device activation) before LMDeploy's worker is built.
* **Each worker binds its own accelerator.** LMDeploy calls ``set_device(index in the placement group)``, which is
  wrong where ray narrowed the worker's device visibility to its one assigned device (index 1 of 1 visible) and
  does not exist for other device names. For dlinfer devices each worker selects the device ray assigned it, as a
  local ordinal of what it can see (nothing for host devices), and the executor checks that no two workers of one
  node share a device.

The worker also stops cleanly. When the engine stops, LMDeploy's executor cancels each worker's ``wait_tasks``, which
cancels the model loop wherever it is (then ``stop_async`` cancels it again): one rank may stop before a step whose
collectives its peer is already inside. On a host device that peer blocks in gloo, with its event loop, and the
executor waits on its ``stop_async`` forever (seen in CI: tp=2 on ray hung after generating). A dlinfer worker first
finishes every step it has received (all ranks receive the same steps), for at most :data:`STOP_DRAIN_S` and only
while its model loop runs, then lets the cancel through.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import ray
from lmdeploy.pytorch.engine.executor import ray_executor

from dlinfer_lmdeploy import devices
from dlinfer_lmdeploy.inventory import replacement

logger = logging.getLogger("dlinfer_lmdeploy")

STOP_DRAIN_S = 60.0
"""How long a stopped (or cancelled) worker waits for its received steps to finish before the loop is cancelled."""

HOST_RESOURCE = "dlinfer_host"
"""Ray resource of a host (CPU) dlinfer device: one unit per tensor-parallel rank."""

RAY_PATCHES = ("ray-device-resource", "ray-cluster-init", "ray-worker-class", "ray-device-binding")

_BUILTIN = {"maca": "GPU", "ascend": "NPU", "camb": "MLU"}  # LMDeploy's own get_device_str mapping
_TORCH_TO_RAY = {"cuda": "GPU", "npu": "NPU", "mlu": "MLU"}
_VISIBILITY_ENV = {"GPU": "CUDA_VISIBLE_DEVICES", "NPU": "ASCEND_RT_VISIBLE_DEVICES", "MLU": "MLU_VISIBLE_DEVICES"}


def ray_resource(device_name: str) -> str:
    """The ray resource one tensor-parallel worker of dlinfer device ``device_name`` takes (a unit of it)."""
    device = devices.get(device_name)
    declared = device.backend.framework.ray_resource
    if declared:
        return declared
    if device_name in _BUILTIN:
        return _BUILTIN[device_name]
    if device.on_host:
        return HOST_RESOURCE
    torch_device = device.backend.device_type
    if torch_device in _TORCH_TO_RAY:
        return _TORCH_TO_RAY[torch_device]
    raise devices.DeviceError(
        f"dlinfer device '{device_name}' (torch device '{torch_device}') has no ray resource: declare "
        f"framework=FrameworkSettings(ray_resource=NAME) in the plugin's Backend and start ray with "
        f"--resources '{{\"NAME\": N}}', "
        f"or use distributed_executor_backend='mp' (one node)"
    )


def _visible_ordinal(resource: str, assigned: str) -> int:
    """Local ordinal of the physical device ``assigned`` among those this process can see."""
    env = os.environ.get(_VISIBILITY_ENV.get(resource, ""), "")
    visible = [v.strip() for v in env.split(",") if v.strip()]
    return visible.index(assigned) if visible else int(assigned)


class DlinferRayWorker(getattr(ray_executor.RayWorkerWrapper, "__dlinfer_original__", ray_executor.RayWorkerWrapper)):
    """LMDeploy's ray worker, defined in this package so that a ray worker process imports the adaptor first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        import dlinfer_lmdeploy

        dlinfer_lmdeploy.install()
        device_type = kwargs.get("device_type", "cuda")
        if devices.is_dlinfer_device(device_type):
            devices.activate(device_type)
        super().__init__(*args, **kwargs)
        self._steps_received = 0
        self._steps_finished = 0
        self._counting_steps = False

    def start(self) -> None:
        """LMDeploy's start, with the model loop's steps counted (finished = returned or raised)."""
        super().start()
        if not devices.is_dlinfer_device(self.device_type):
            return
        agent = self.model_agent
        step = getattr(agent, "_async_step", None)  # BaseModelAgent._async_loop_background awaits it per step
        if step is None:
            logger.warning("dlinfer-lmdeploy: %s has no _async_step; ray workers stop without finishing their steps",
                           type(agent).__name__)
            return

        async def counted_step(**inputs: Any) -> Any:
            try:
                return await step(**inputs)
            finally:
                self._steps_finished += 1

        agent._async_step = counted_step
        self._counting_steps = True

    async def forward_async(self, inputs: Any) -> Any:
        self._steps_received += 1
        return await super().forward_async(inputs)

    def _loop_running(self) -> bool:
        """False once LMDeploy's model loop task has ended (it failed or was cancelled): nothing will finish."""
        task = getattr(self.model_agent, "_background_task", None)
        return task is None or not task.done()

    async def drain_steps(self, timeout_s: float = STOP_DRAIN_S) -> int:
        """Wait until every received step has finished, at most ``timeout_s`` and only while the model loop runs;
        return how many did not."""
        if not self._counting_steps:
            return 0
        deadline = time.monotonic() + timeout_s
        while self._steps_finished < self._steps_received and self._loop_running() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        return self._steps_received - self._steps_finished

    async def _drain_before_cancel(self, what: str) -> None:
        t0 = time.monotonic()
        unfinished = await self.drain_steps(STOP_DRAIN_S)
        if unfinished:
            why = "its model loop had ended" if not self._loop_running() else f"the {STOP_DRAIN_S:.0f} s limit"
            logger.warning(
                "dlinfer-lmdeploy: ray worker rank %s: %s with %d of %d received steps unfinished (waited %.1f s; %s)",
                self.rank, what, unfinished, self._steps_received, time.monotonic() - t0, why,
            )

    async def wait_tasks(self) -> Any:
        """LMDeploy's wait; when the executor cancels it (engine stop), finish the received steps first."""
        if not devices.is_dlinfer_device(self.device_type):
            return await super().wait_tasks()
        waiting = asyncio.ensure_future(super().wait_tasks())
        try:
            return await asyncio.shield(waiting)
        except asyncio.CancelledError:
            if not waiting.done():
                await self._drain_before_cancel("cancelled")
                waiting.cancel()  # LMDeploy's wait then cancels the model loop, as without the drain
                await asyncio.gather(waiting, return_exceptions=True)
            raise

    async def stop_async(self) -> None:
        """Finish the received steps (at most :data:`STOP_DRAIN_S`), then LMDeploy's stop (cancel the loop)."""
        if devices.is_dlinfer_device(self.device_type):
            await self._drain_before_cancel("stops")
        return await super().stop_async()

    def dlinfer_bind_device(self) -> dict[str, Any]:
        """Select the accelerator ray assigned to this worker (host devices: none); return where it runs."""
        device = devices.get(self.device_type)
        where: dict[str, Any] = {"node_ip": self.node_ip, "pid": os.getpid(), "device": None}
        if device.on_host:
            return where
        import torch

        resource = ray_resource(self.device_type)
        ids = [str(i) for i in ray.get_runtime_context().get_accelerator_ids().get(resource, [])]
        if len(ids) != 1:
            raise RuntimeError(
                f"dlinfer-lmdeploy: ray worker of device '{self.device_type}' was assigned {ids} of resource "
                f"'{resource}', expected exactly one"
            )
        ordinal = _visible_ordinal(resource, ids[0])
        getattr(torch, device.backend.device_type).set_device(ordinal)
        where["device"] = f"{device.backend.device_type}:{ordinal} (ray {resource} {ids[0]})"
        where["physical"] = ids[0]
        return where

    def warmup_dist(self) -> None:
        if not devices.is_dlinfer_device(self.device_type):
            return super().warmup_dist()
        import torch
        from lmdeploy.pytorch.distributed import all_reduce, get_dist_manager

        torch_device = devices.get(self.device_type).backend.device_type
        with get_dist_manager().context(self.dist_ctx):
            tmp = torch.ones((1,), device=torch_device)
            all_reduce(tmp, group=self.dist_ctx.tp_group.gpu_group)
        return None


@replacement("ray-device-resource")
def _get_device_str(original: Any) -> Any:
    def get_device_str(device_type: str | None = None) -> str:
        if device_type is None:
            from lmdeploy.pytorch.devices import get_device_manager

            name = get_device_manager().current_context().device_type
        else:
            name = device_type
        if devices.is_dlinfer_device(name):
            return ray_resource(name)
        return original(device_type)

    return get_device_str


@replacement("ray-cluster-init")
def _init_ray_cluster(original: Any) -> Any:
    def init_ray_cluster(
        world_size: int, ray_address: str | None = None, dp: int = 1, device_type: str = "cuda"
    ) -> Any:
        host = devices.is_dlinfer_device(device_type) and ray_resource(device_type) == HOST_RESOURCE
        if host and not ray.is_initialized():
            from lmdeploy.pytorch.ray import _get_obj_store_memory

            try:
                ray.init(address=ray_address, ignore_reinit_error=True, num_cpus=world_size,
                         resources={HOST_RESOURCE: world_size}, object_store_memory=_get_obj_store_memory(dp=dp))
            except ValueError as exc:  # an existing cluster: it declares its own resources
                if "num_cpus" not in str(exc):
                    raise
                ray.init(address=ray_address, ignore_reinit_error=True)
        return original(world_size, ray_address=ray_address, dp=dp, device_type=device_type)

    return init_ray_cluster


@replacement("ray-worker-class")
def _worker_class(original: Any) -> Any:
    return DlinferRayWorker


@replacement("ray-device-binding")
def _device_binding(original: Any) -> Any:
    def _init_distributed_environment_by_device(self: Any, device_str: str) -> None:
        if not devices.is_dlinfer_device(device_str):
            return original(self, device_str)
        self.workers = self._sort_workers(ray_executor._get_master_addr(), self.workers)
        bound = ray.get([w.dlinfer_bind_device.remote() for w in self.workers])
        taken = [(b["node_ip"], b["physical"]) for b in bound if b["device"] is not None]
        if len(set(taken)) != len(taken):
            raise RuntimeError(f"dlinfer-lmdeploy: two ray workers of one node share a device: {bound}")
        return None

    return _init_distributed_environment_by_device


def install() -> None:
    """Apply the ray patches (idempotent); called when an engine of a dlinfer device is built on the ray executor."""
    from dlinfer_lmdeploy import inventory

    for name in RAY_PATCHES:
        inventory.apply(name)
