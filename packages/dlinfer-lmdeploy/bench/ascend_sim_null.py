"""The Ascend plugin on the vendor simulator with null vendor kernels, for host-time measurements on a CPU host.

:func:`activate` installs dlinfer-ascend's test simulator (``packages/dlinfer-ascend/tests/npu_sim``) as torch_npu,
activates the ``ascend`` backend as on hardware, and replaces every simulated ``torch.ops.npu`` / ``torch.ops.atb``
kernel, and the op table's ``linear`` (one aclnn matmul on Ascend), by a :class:`NullKernel`: the first call with
given positional tensor shapes runs the simulator to learn the result's shapes, later calls return empty tensors of
those shapes. What is left of a step is the host work of the framework, dlinfer and the Ascend plugin's glue, as on
a device whose kernels run asynchronously; values are meaningless. Every call is counted and can be recorded, so a
step's vendor calls can be replayed alone (:class:`Recorder`): the floor a hand-written integration would pay.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

SIM_DIR = Path(__file__).resolve().parents[2] / "dlinfer-ascend" / "tests"


class Recorder:
    """Counts vendor-kernel calls; while :attr:`calls` is a list, appends ``(kernel, args, kwargs)`` to it;
    :meth:`replay` calls :attr:`replayed` again."""

    def __init__(self) -> None:
        self.count = 0
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] | None = None
        self.replayed: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []

    def replay(self) -> None:
        for fn, args, kwargs in self.replayed:
            fn(*args, **kwargs)


def _empty_like_result(result: Any) -> Callable[[], Any]:
    if isinstance(result, torch.Tensor):
        shape, dtype, device = result.shape, result.dtype, result.device
        return lambda: torch.empty(shape, dtype=dtype, device=device)
    if isinstance(result, (tuple, list)):
        makers = [_empty_like_result(r) for r in result]
        return lambda: tuple(m() for m in makers)
    return lambda: result


class NullKernel:
    """A simulated kernel that computes once per shapes of its positional tensors, afterwards only allocates its
    result."""

    def __init__(self, name: str, real: Callable[..., Any], recorder: Recorder) -> None:
        self.name, self._real, self._rec = name, real, recorder
        self._results: dict[Any, Callable[[], Any]] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._rec.count += 1
        if self._rec.calls is not None:
            self._rec.calls.append((self, args, kwargs))
        key = tuple(a.shape for a in args if isinstance(a, torch.Tensor))
        make = self._results.get(key)
        if make is None:
            make = self._results[key] = _empty_like_result(self._real(*args, **kwargs))
        return make()


def activate() -> tuple[Any, Recorder]:
    """Simulator installed, ``ascend`` activated, vendor kernels and ``linear`` nulled; ``(backend, recorder)``."""
    # LMDeploy and dynamo read torch.cuda at import; the plugin's transfer_to_npu then redirects it to torch.npu
    import torch._dynamo  # noqa: F401

    import dlinfer_lmdeploy.impls.attention  # noqa: F401
    import dlinfer_lmdeploy.impls.dense  # noqa: F401

    sys.path.insert(0, str(SIM_DIR))
    import npu_sim
    from dlinfer import dispatch
    from dlinfer_ascend import runtime
    from dlinfer_ascend.ops._kernels import K

    npu_sim.install()
    runtime._device_nodes = lambda: True  # the simulator stands in for the device nodes
    backend = dispatch.activate("ascend")
    rec = Recorder()
    for ns in ("npu", "atb"):
        real = getattr(K, ns)
        names = [n for n in vars(real) if not n.startswith("__")]
        setattr(K, ns, SimpleNamespace(**{n: NullKernel(n, getattr(real, n), rec) for n in names}))
    dispatch.TABLE.linear = NullKernel("linear", dispatch.TABLE.linear, rec)
    return backend, rec
