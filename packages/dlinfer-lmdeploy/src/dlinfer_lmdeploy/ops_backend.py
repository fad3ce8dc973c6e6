"""The generic dlinfer OpsBackend for LMDeploy, configured from a plugin's declaration.

LMDeploy uses backend *classes* (``get_backend()`` returns a class). :func:`ops_backend_for`
returns one subclass of :class:`DlinferOpsBackend` per dlinfer device; the subclass only
binds the plugin's :class:`dlinfer.plugin.Backend` — every behaviour (block shape, layout,
host mirrors, slot dtype, collective backend, device graphs) is read from that declaration.
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

import torch
from dlinfer.plugin import Backend
from lmdeploy.pytorch.backends.base import BuildSpec, ImplT
from lmdeploy.pytorch.backends.default import DefaultOpsBackend

from dlinfer_lmdeploy import devices
from dlinfer_lmdeploy.impls._errors import unsupported


class DlinferOpsBackend(DefaultOpsBackend):
    """Builds LMDeploy layers as Impls that call ``dlinfer.ops``."""

    device_name: ClassVar[str] = ""
    plugin: ClassVar[Backend]

    @classmethod
    def get_name(cls) -> str:  # type: ignore[override]
        return f"dlinfer:{cls.plugin.name}"

    # -- layers ------------------------------------------------------------------------------
    @classmethod
    def build_op(cls, spec: BuildSpec[ImplT], *, enable_deterministic: bool = False) -> ImplT:
        from lmdeploy.pytorch.backends.activation import SiluAndMulBuildSpec
        from lmdeploy.pytorch.backends.apply_rotary_emb import ApplyRotaryEmbBuildSpec
        from lmdeploy.pytorch.backends.attention import PagedAttentionBuildSpec
        from lmdeploy.pytorch.backends.awq_modules import LinearW4A16BuildSpec
        from lmdeploy.pytorch.backends.flash_attention import FlashAttentionBuildSpec
        from lmdeploy.pytorch.backends.linear import LinearBuildSpec
        from lmdeploy.pytorch.backends.moe import FusedMoEBuildSpec, SoftmaxTopKBuildSpec
        from lmdeploy.pytorch.backends.norm import RMSNormBuildSpec
        from lmdeploy.pytorch.backends.qmodules import LinearW8A8BuildSpec, RMSNormW8A8BuildSpec

        from dlinfer_lmdeploy.impls import attention, dense, flash_attention, moe, quant

        impl: Any
        if isinstance(spec, PagedAttentionBuildSpec):
            if spec.mla_index_topk is not None:
                raise unsupported("attention", "mla_index_topk")
            if spec.block_sparse_size not in (1, None):
                raise unsupported("attention", "block_sparse_size", str(spec.block_sparse_size))
            if spec.use_flash_mla or (spec.v_head_dim is not None and spec.v_head_dim < spec.head_dim):
                raise NotImplementedError(
                    f"dlinfer-lmdeploy: MLA models (multi-head latent attention: DeepSeek-V2/V3/R1, Kimi-K2; "
                    f"attention head size {spec.head_dim}, V head size {spec.v_head_dim}, V a strided view of the "
                    f"K cache) are not supported on dlinfer device '{cls.device_name}': no dlinfer backend serves "
                    f"them through LMDeploy yet (the kit's MLA cases check a backend's op-level claim, "
                    f"Capabilities.mla). Run these models on LMDeploy's own 'cuda' device."
                )
            cls.check_attention(
                spec.head_dim,
                spec.v_head_dim,
                softcap=bool(spec.logit_softcapping),
                alibi=spec.alibi,
                window=attention.window_of(spec.sliding_window) is not None,
            )
            impl = attention.DlinferPagedAttentionImpl(
                num_heads=spec.num_heads,
                head_size=spec.head_dim,
                scale=spec.scale,
                num_kv_heads=spec.num_kv_heads,
                v_head_size=spec.v_head_dim,
                alibi=spec.alibi,
                sliding_window=spec.sliding_window,
                logit_softcapping=spec.logit_softcapping,
                causal=spec.causal,
                use_flash_mla=spec.use_flash_mla,
                learnable_sink=spec.learnable_sink,
            )
        elif isinstance(spec, FlashAttentionBuildSpec):
            cls.check_attention(
                spec.head_dim,
                spec.v_head_dim,
                paged=False,
                softcap=bool(spec.logit_softcapping),
                window=attention.window_of(spec.sliding_window) is not None,
            )
            impl = flash_attention.DlinferFlashAttentionImpl(
                num_heads=spec.num_heads,
                head_dim=spec.head_dim,
                scale=spec.scale,
                num_kv_heads=spec.num_kv_heads,
                v_head_dim=spec.v_head_dim,
                causal=spec.causal,
                sliding_window=spec.sliding_window,
                logit_softcapping=spec.logit_softcapping,
            )
        elif isinstance(spec, RMSNormBuildSpec):
            impl = dense.DlinferRMSNormImpl(spec.hidden_size, spec.eps)
        elif isinstance(spec, SiluAndMulBuildSpec):
            impl = dense.DlinferSiluAndMulImpl()
        elif isinstance(spec, ApplyRotaryEmbBuildSpec):
            impl = dense.DlinferApplyRotaryEmbImpl()
        elif isinstance(spec, LinearBuildSpec):
            impl = dense.DlinferLinearImpl()
        elif isinstance(spec, SoftmaxTopKBuildSpec):
            impl = moe.DlinferSoftmaxTopKImpl(spec.top_k, spec.dim, spec.n_groups)
        elif isinstance(spec, FusedMoEBuildSpec):
            impl = moe.DlinferFusedMoEImpl(spec.top_k, spec.num_experts, spec.renormalize, spec.ep_size)
        elif isinstance(spec, RMSNormW8A8BuildSpec):
            impl = quant.DlinferRMSNormW8A8Impl(spec.hidden_size, spec.eps, spec.quant_dtype)
        elif isinstance(spec, LinearW8A8BuildSpec):
            impl = quant.DlinferLinearW8A8Impl(spec.output_dtype, spec.quant_dtype)
        elif isinstance(spec, LinearW4A16BuildSpec):
            impl = quant.DlinferLinearW4A16Impl(spec.in_features, spec.out_features, spec.w_bit, spec.group_size)
        else:
            # Framework-side pieces with no dlinfer op (rotary tables for every rope type, embedding,
            # sampling, GELU, LayerNorm, routers): LMDeploy's portable PyTorch implementations.
            # Anything the default backend lacks raises its own "not supported" error.
            return super().build_op(spec, enable_deterministic=enable_deterministic)
        return cast(ImplT, impl)

    @classmethod
    def check_attention(cls, head_size: int, v_head_size: int | None, **features: bool) -> None:
        """Refuse, when the engine builds its layers, an attention layer the plugin's capabilities do not serve."""
        refused = cls.plugin.capabilities.attention_refusals(head_size, v_head_size, **features)
        if not refused:
            return
        raise NotImplementedError(
            f"dlinfer-lmdeploy: the model's attention needs {'; '.join(refused)}, which dlinfer backend "
            f"'{cls.plugin.name}' (LMDeploy device '{cls.device_name}') does not serve (its Capabilities). Use a "
            f"device whose backend serves it (see `dlinfer info`), or a model without it."
        )

    # -- per-step metadata -------------------------------------------------------------------
    @staticmethod
    def get_attention_metadata_cls() -> type:
        from dlinfer_lmdeploy.metadata import DlinferAttentionMetadata

        return DlinferAttentionMetadata

    @classmethod
    def update_step_context(cls, step_context: Any) -> Any:
        from dlinfer_lmdeploy import metadata

        step_context.attn_metadata = metadata.build(step_context, cls.plugin)
        return step_context

    # -- cache -------------------------------------------------------------------------------
    @classmethod
    def get_k_block_shape(  # type: ignore[override]
        cls, block_size: int, num_heads: int, head_size: int, dtype: torch.dtype
    ) -> tuple[int, ...]:
        cls.check_block_size(block_size)
        return cls.plugin.kv_block_shape(block_size, num_heads, head_size)

    @classmethod
    def get_v_block_shape(  # type: ignore[override]
        cls, block_size: int, num_heads: int, head_size: int, dtype: torch.dtype
    ) -> tuple[int, ...]:
        cls.check_block_size(block_size)
        return cls.plugin.kv_block_shape(block_size, num_heads, head_size)

    @classmethod
    def check_block_size(cls, block_size: int) -> None:
        allowed = cls.plugin.block_sizes
        if allowed is not None and block_size not in allowed:
            raise ValueError(
                f"dlinfer backend '{cls.plugin.name}' (LMDeploy device '{cls.device_name}') supports KV block sizes "
                f"{tuple(allowed)}, got block_size={block_size}; set PytorchEngineConfig(block_size=...)"
            )

    @classmethod
    def get_cache_backend(cls) -> type:
        from dlinfer_lmdeploy.cache import DlinferCacheBackend

        return DlinferCacheBackend

    # -- process, distributed, graphs ---------------------------------------------------------
    @classmethod
    def init(cls) -> None:  # type: ignore[override]
        devices.activate(cls.device_name)

    @classmethod
    def ccl_backend(cls) -> str:  # type: ignore[override]
        return cls.plugin.dist_backend

    @classmethod
    def build_communicator(cls, cpu_group: Any, device_group: Any, dist_config: Any) -> Any:
        from lmdeploy.pytorch import envs

        if envs.enable_flashinfer_allreduce or envs.enable_symm_mem_allreduce:
            raise unsupported("communicator", "flashinfer/symm-mem all-reduce", "CUDA-only communicators")
        return super().build_communicator(cpu_group=cpu_group, device_group=device_group, dist_config=dist_config)

    @classmethod
    def build_graph_runner(  # type: ignore[override]
        cls, model: torch.nn.Module, model_config: Any, cache_config: Any, backend_config: Any, device: Any
    ) -> Any:
        if backend_config.eager_mode or cls.plugin.graph is None:
            from dlinfer_lmdeploy.warmup import DlinferEagerRunner  # LMDeploy's plain runner + prefill warm-up sizes

            return DlinferEagerRunner(model, model_config, cache_config, backend_config, device, plugin=cls.plugin)
        from dlinfer_lmdeploy.graph_runner import DlinferGraphRunner

        return DlinferGraphRunner(
            model, model_config, cache_config, backend_config, device, plugin=cls.plugin, ops_backend=cls
        )

    @staticmethod
    def support_ray() -> bool:
        """True where ray is installed (the ``ray`` extra): LMDeploy then picks its ray executor for tp>1, as it
        does for ``cuda`` (``distributed_executor_backend="mp"`` keeps the multi-process one); mp otherwise."""
        import importlib.util

        return importlib.util.find_spec("ray") is not None


_CLASSES: dict[tuple[str, int], type[DlinferOpsBackend]] = {}


def ops_backend_for(device_name: str) -> type[DlinferOpsBackend]:
    """The OpsBackend class for a dlinfer device (the same class on every call for one declaration)."""
    device = devices.get(device_name)
    key = (device.lmdeploy_name, id(device.backend))
    cls = _CLASSES.get(key)
    if cls is None:
        safe = "".join(c if c.isalnum() else "_" for c in device.lmdeploy_name)
        cls = type(
            f"DlinferOpsBackend_{safe}",
            (DlinferOpsBackend,),
            {"device_name": device.lmdeploy_name, "plugin": device.backend, "__module__": __name__},
        )
        _CLASSES[key] = cls
    return cls
