"""The replacements behind the inventory's LMDeploy patches (see :mod:`dlinfer_lmdeploy.inventory`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import pickle
from collections.abc import AsyncIterator, Callable
from typing import Any

from dlinfer_lmdeploy import devices
from dlinfer_lmdeploy.inventory import replacement


def _current_device_type() -> str:
    from lmdeploy.pytorch.devices import get_device_manager

    return get_device_manager().current_context().device_type


@replacement("backend-selector")
def _selector(original: Callable[[], Any]) -> Callable[[], Any]:
    @functools.wraps(original)
    def _get_backend() -> Any:
        device_type = _current_device_type()
        if devices.is_dlinfer_device(device_type):
            from dlinfer_lmdeploy.ops_backend import ops_backend_for

            return ops_backend_for(device_type)
        return original()

    return _get_backend


_FLOAT_DTYPES = ("auto", "float16", "bfloat16", "float32")


@replacement("engine-config-validation")
def _config_post_init(original: Callable[[Any], None]) -> Callable[[Any], None]:
    @functools.wraps(original)
    def __post_init__(self: Any) -> None:
        device_type = self.device_type
        if not devices.is_dlinfer_device(device_type):
            return original(self)
        device = devices.get(device_type)
        if self.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"invalid dtype {self.dtype!r} for dlinfer device '{device_type}'; use {_FLOAT_DTYPES}")
        if self.dtype == "float32" and not device.on_host:
            raise ValueError(f"dtype 'float32' is only supported on CPU dlinfer devices, not '{device_type}'")
        if int(self.quant_policy) != 0:
            raise ValueError(
                f"KV-cache quantisation (quant_policy={int(self.quant_policy)}) is not supported on dlinfer device "
                f"'{device_type}'"
            )
        allowed = device.backend.block_sizes
        if allowed is not None and self.block_size not in allowed:
            default = next(f.default for f in dataclasses.fields(self) if f.name == "block_size")
            if self.block_size != default:
                raise ValueError(
                    f"dlinfer backend '{device.backend.name}' (device '{device_type}') supports block sizes "
                    f"{tuple(allowed)}, got block_size={self.block_size}"
                )
            fitting = [b for b in allowed if b <= self.block_size] or list(allowed)
            self.block_size = max(fitting)
            self.kernel_block_size = -1
        # The remaining checks are device-neutral: run LMDeploy's own with neutral stand-ins.
        dtype = self.dtype
        self.device_type, self.dtype = "cuda", ("float16" if dtype == "float32" else dtype)
        try:
            original(self)
        finally:
            self.device_type, self.dtype = device_type, dtype

    return __post_init__


@replacement("cli-device-choices")
def _cli_device(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def device(parser: Any, default: str = "cuda", choices: list[str] | None = None) -> Any:
        base = list(choices) if choices is not None else ["cuda", "ascend", "maca", "camb"]
        extra = [name for name in sorted(devices.devices()) if name not in base]
        return original(parser, default=default, choices=base + extra)

    return device


@replacement("deeplink-import")
def _try_import_deeplink(original: Callable[[str], None]) -> Callable[[str], None]:
    @functools.wraps(original)
    def try_import_deeplink(device_type: str) -> None:
        if devices.is_dlinfer_device(device_type):
            devices.activate(device_type)
            return None
        return original(device_type)

    return try_import_deeplink


@replacement("max-batch-size")
def _max_batch_size(original: Callable[[str], int]) -> Callable[[str], int]:
    @functools.wraps(original)
    def get_max_batch_size(device_type: str) -> int:
        if devices.is_dlinfer_device(device_type):
            device = devices.get(device_type)
            declared = device.backend.max_batch_size
            return int(declared) if declared is not None else (16 if device.on_host else 256)
        return original(device_type)

    return get_max_batch_size


@replacement("bf16-support")
def _bf16(original: Callable[[str], bool]) -> Callable[[str], bool]:
    @functools.wraps(original)
    def is_bf16_supported(device_type: str = "cuda") -> bool:
        if devices.is_dlinfer_device(device_type):
            import torch

            return torch.bfloat16 in devices.get(device_type).backend.dtypes
        return original(device_type)

    return is_bf16_supported


@replacement("cogvlm-config-bf16")
def _cogvlm_config(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def build(cls: Any, hf_config: Any, model_path: str | None = None, **kwargs: Any) -> Any:
        device_type = kwargs.get("device_type")
        if not devices.is_dlinfer_device(device_type):
            return original(cls, hf_config, model_path, **kwargs)
        from lmdeploy.pytorch.configurations.default import DefaultModelConfigBuilder
        from lmdeploy.utils import is_bf16_supported

        heads = getattr(hf_config, "num_multi_query_heads", None)
        hf_config.num_key_value_heads = heads if heads else hf_config.num_attention_heads
        cfg = DefaultModelConfigBuilder.build(hf_config, model_path, **kwargs)
        cfg.cogvlm_style = True
        hf_config.torch_dtype = "bfloat16" if is_bf16_supported(device_type) else "float16"
        return cfg

    return build


_COGVLM_MODEL = ("lmdeploy.pytorch.models.cogvlm", "CogVLMForCausalLM")


@replacement("cogvlm-batched-image-prefill")
def _cogvlm_model_metas(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def update_model_metas(self: Any, past_key_values: Any, inputs_embeds: Any = None, context: Any = None) -> Any:
        model = self.model
        if (
            devices.active() is None
            or context is None
            or context.is_decoding
            or (type(model).__module__, type(model).__name__) != _COGVLM_MODEL
            or context.q_seqlens.numel() < 2
        ):
            return original(self, past_key_values, inputs_embeds, context)
        saved = context.model_metas, context.q_seqlens
        context.model_metas = model._get_model_metas(context)  # reads q_seqlens.numel() when there are none
        context.q_seqlens = saved[1].tolist()  # Tensor.split takes a list of ints
        try:
            return original(self, past_key_values, inputs_embeds, context)
        finally:
            context.model_metas, context.q_seqlens = saved

    return update_model_metas


@replacement("executor-activation")
def _build_executor(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def build_executor(*args: Any, **kwargs: Any) -> Any:
        device_type = kwargs.get("device_type")
        if device_type is not None and devices.is_dlinfer_device(device_type):
            spec = kwargs.get("specdecode_config")
            if spec is not None and not devices.get(device_type).on_host:
                raise NotImplementedError(
                    f"dlinfer-lmdeploy: speculative decoding (speculative_config method "
                    f"{getattr(spec, 'method', '?')!r}) is not supported on dlinfer device '{device_type}': it is "
                    f"verified end to end only on the CPU device (an EAGLE draft == greedy decoding), not yet on "
                    f"this accelerator. Build the engine without speculative_config."
                )
            devices.activate(device_type)
            if _executor_backend(kwargs) == "ray":
                _install_ray(device_type)
        return original(*args, **kwargs)

    return build_executor


def _executor_backend(kwargs: dict[str, Any]) -> str | None:
    """The executor LMDeploy's build_executor will pick (it decides the same way: explicit, env, dp>1, device)."""
    backend = kwargs.get("distributed_executor_backend")
    if backend is not None:
        return str(backend)
    from lmdeploy.pytorch.engine.executor import get_distributed_executor_backend

    dist = kwargs.get("dist_config")
    if dist is None:
        return None
    return get_distributed_executor_backend(dist.world_size, dist.dp, kwargs["device_type"])


def _install_ray(device_type: str) -> None:
    """Apply the ray executor's patches (dlinfer_lmdeploy.ray_workers), or say how to install ray."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise ImportError(
            f"dlinfer-lmdeploy: distributed_executor_backend='ray' on dlinfer device '{device_type}' needs ray, "
            "which is not installed: pip install 'dlinfer-lmdeploy[ray]' (or use distributed_executor_backend='mp' "
            "on one node)"
        )
    from dlinfer_lmdeploy import ray_workers

    ray_workers.install()


@replacement("flash-mla-probe")
def _flash_mla_available(original: Callable[[], bool]) -> Callable[[], bool]:
    @functools.wraps(original)
    def flash_mla_available() -> bool:
        if devices.active() is not None:
            return False
        return original()

    return flash_mla_available


@replacement("moe-build-refusals")
def _fused_moe_init(original: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        device = devices.active()
        if device is not None:
            bound = inspect.signature(original).bind(self, *args, **kwargs)
            bias, act_func = bound.arguments.get("bias", False), bound.arguments.get("act_func")
            if bias or act_func is not None:
                what = "expert biases (bias=True, e.g. GPT-OSS)" if bias else "a custom expert activation (act_func)"
                raise NotImplementedError(
                    f"dlinfer-lmdeploy fused_moe: {what} is not supported on dlinfer device '{device}' (the dlinfer "
                    f"fused_moe op has SiLU-gated experts without biases); use a model without it"
                )
        original(self, *args, **kwargs)

    return __init__


@replacement("empty-prompt")
def _add_message(original: Callable[[Any, list[Any]], None]) -> Callable[[Any, list[Any]], None]:
    @functools.wraps(original)
    def _add_message(self: Any, reqs: list[Any]) -> None:
        device_type = getattr(self.engine_config, "device_type", None)
        if not devices.is_dlinfer_device(device_type):
            return original(self, reqs)
        from lmdeploy.messages import ResponseType
        from lmdeploy.utils import get_logger

        kept = []
        for req in reqs:
            session = self.scheduler.get_session(req.data["session_id"])
            if session is not None and len(session.sequences) == 0 and len(req.data["token_ids"]) == 0:
                reason = (
                    f"session {req.data['session_id']}: empty prompt (no input tokens) refused on dlinfer device "
                    f"'{device_type}'; send at least one token"
                )
                get_logger("lmdeploy").error(reason)
                self._response(req.resp, ResponseType.INPUT_LENGTH_ERROR, err_msg=reason)
                continue
            kept.append(req)
        if kept:
            original(self, kept)

    return _add_message


@replacement("worker-process-group")
def _worker_process_group(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def init_process_group(self: Any, rank: int, master_addr: str | None = None, master_port: str | None = None) -> Any:
        if not devices.is_dlinfer_device(self.device_type):
            return original(self, rank, master_addr, master_port)
        from lmdeploy.pytorch.devices import DeviceContext, get_device_manager

        devices.activate(self.device_type)
        with get_device_manager().context(DeviceContext(device_type=self.device_type)):
            return original(self, rank, master_addr, master_port)

    return init_process_group


@replacement("mp-notifier-wait-async")
def _notifier_wait_async(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    from lmdeploy.pytorch.engine.executor import mp_executor

    @contextlib.asynccontextmanager
    async def wait_async(self: Any) -> AsyncIterator[None]:
        if devices.active() is None:
            async with original(self):
                yield
            return
        # LMDeploy's protocol unchanged; only the blocking waits leave the event loop thread.
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.events[self._event_id].wait)
        yield
        if self._event_id == mp_executor.NUM_SHARED_BLOCK - 1:
            await loop.run_in_executor(None, self.bar.wait)
            await loop.run_in_executor(None, self.bar.wait)
        self._update_event_id()

    functools.update_wrapper(wait_async, original)
    return wait_async


@replacement("mp-receive-async")
def _receive_async(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    from lmdeploy.pytorch.engine.executor import mp_executor

    @functools.wraps(original)
    async def receive_async(self: Any) -> Any:
        if devices.active() is None:
            return await original(self)
        async with self.notifier.wait_async():
            dumped_data, is_receiver, remain_size = self._receive_step0()
        while remain_size > 0:  # LMDeploy's _receive_step1, with asynchronous waits
            async with self.notifier.wait_async():
                with self.acquire_buf() as buf:
                    pac_size = min(remain_size, mp_executor.SHARED_BLOCK_SIZE)
                    remain_size -= pac_size
                    if is_receiver:
                        dumped_data += buf[mp_executor.HEAD_SIZE : mp_executor.HEAD_SIZE + pac_size]
        return pickle.loads(dumped_data) if is_receiver else None

    return receive_async


@replacement("vl-mm-feature-dtype")
def _mm_feature_dtype(original: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    @functools.wraps(original)
    def _resolve_mm_feature_dtype(hf_config: Any, backend_config: Any) -> Any:
        device_type = getattr(backend_config, "device_type", None)
        if getattr(backend_config, "dtype", None) == "float32" and devices.is_dlinfer_device(device_type):
            import torch

            if not devices.get(device_type).on_host:  # engine-config-validation refuses this already
                raise ValueError(f"dtype 'float32' is only supported on CPU dlinfer devices, not '{device_type}'")
            return torch.float32
        return original(hf_config, backend_config)

    return _resolve_mm_feature_dtype
