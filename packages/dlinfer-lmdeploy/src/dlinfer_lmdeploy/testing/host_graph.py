"""A CPU test device with a host stand-in device graph, so graph mode (``eager_mode=False``) runs on the CPU.

The built-in reference backend declares no device graph, so ``eager_mode=False`` on the ``cpu``
device uses LMDeploy's plain runner. :func:`installed` registers this module as a dlinfer plugin
(through ``DLINFER_PLUGINS``, exactly like an entry point): the reference backend's declaration
under the name :data:`NAME`, with a :class:`HostGraph`. The adaptor's ``DlinferGraphRunner`` then
captures decode steps into fixed buffers; a "replay" re-runs the forward from those buffers
(``rerun_instead_of_replay``), so a graph-mode run on this device checks the runner's buffers,
padding and capture keys against eager mode and the HF oracle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

from dlinfer.plugin import Backend, DeviceGraph, hookimpl

NAME = "hostgraph"
CALLS: Counter[str] = Counter()
"""``graph_created`` / ``graph_captured`` counts of this process."""
_PREFILL_WARMUP: tuple[int, ...] = ()
"""``FrameworkSettings.prefill_warmup_tokens`` of the declaration (set by :func:`installed`)."""


class HostGraph:
    """Host stand-in for a device graph: the adaptor re-runs the forward from its fixed buffers."""

    rerun_instead_of_replay = True

    def __init__(self) -> None:
        CALLS["graph_created"] += 1


def _capture(graph: HostGraph, pool: object = None, stream: object = None) -> contextlib.AbstractContextManager[None]:
    CALLS["graph_captured"] += 1
    return contextlib.nullcontext()


def bare_backend(name: str, **fields: Any) -> Backend:
    """A declaration with no ops and a :class:`HostGraph` (counted like the plugin's), for unit tests of the graph
    runners that build a runner directly; ``fields`` override :class:`Backend` fields."""
    return Backend(name=name, device_type="cpu", api_version=">=1.0", is_available=lambda: True, load_ops=dict,
                   graph=DeviceGraph(graph_factory=HostGraph, capture=_capture), **fields)


@hookimpl
def dlinfer_backend() -> Backend:
    from dlinfer.reference.plugin import dlinfer_backend as reference

    ref = reference()
    return dataclasses.replace(
        ref,
        name=NAME,
        graph=DeviceGraph(graph_factory=HostGraph, capture=_capture),
        framework=dataclasses.replace(ref.framework, prefill_warmup_tokens=_PREFILL_WARMUP),
        description="test-only: the reference backend with a host stand-in device graph",
    )


@contextlib.contextmanager
def installed(prefill_warmup_tokens: tuple[int, ...] = ()) -> Iterator[str]:
    """Register the ``hostgraph`` device for the block (declaring ``prefill_warmup_tokens``); yields its LMDeploy
    device name."""
    from dlinfer.registry import REGISTRY

    from dlinfer_lmdeploy import devices

    global _PREFILL_WARMUP
    _PREFILL_WARMUP = prefill_warmup_tokens
    old = os.environ.get("DLINFER_PLUGINS")
    os.environ["DLINFER_PLUGINS"] = ",".join(filter(None, [old, __name__]))
    REGISTRY.discover(force=True)
    try:
        yield NAME
    finally:
        _PREFILL_WARMUP = ()
        if old is None:
            os.environ.pop("DLINFER_PLUGINS", None)
        else:
            os.environ["DLINFER_PLUGINS"] = old
        REGISTRY.discover(force=True)
        if devices.active() == NAME:
            devices._reset_for_tests()
