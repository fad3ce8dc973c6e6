"""Declaration of the built-in reference backend."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dlinfer.plugin import Backend, Capabilities, hookimpl
from dlinfer.spec import API_VERSION


def _load_ops() -> Mapping[str, Callable[..., Any]]:
    from dlinfer.reference.ops import OPS

    return OPS


@hookimpl
def dlinfer_backend() -> Backend:
    return Backend(
        name="reference",
        device_type="cpu",
        api_version=f"=={API_VERSION}",
        is_available=lambda: True,
        load_ops=_load_ops,
        kv_layout="NHD",
        block_sizes=None,
        host_seqlens=False,
        dist_backend="gloo",
        # every option, any head size; MLA (V a strided view of K) tested against a float64 loop
        capabilities=Capabilities(mla=True),
        description="pure PyTorch, every op, any device (the oracle and the fallback)",
    )
