"""Ascend SoC identification (A2 / A3 / 310P ...) from ``torch.npu.get_soc_version()``.

Never called at discovery: the framework adaptor asks after activation (e.g. to pick the MoE
communication scheme). Enum ranges: docs/vendor-semantics.md §2.28 (NpuVariables.h).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True)
class SocInfo:
    """version: the raw enum; family: "A2", "A3", "910", "310P", "310B", "950" or "unknown"."""

    version: int
    family: str

    @property
    def is_a2(self) -> bool:
        return self.family == "A2"

    @property
    def is_a3(self) -> bool:
        return self.family == "A3"


_RANGES = (
    (100, 104, "910"),
    (200, 205, "310P"),
    (220, 225, "A2"),
    (240, 243, "310B"),
    (250, 256, "A3"),
    (260, 260, "950"),
)


def classify(version: int) -> SocInfo:
    """Map a ``get_soc_version()`` value to its family."""
    for lo, hi, family in _RANGES:
        if lo <= version <= hi:
            return SocInfo(version, family)
    return SocInfo(version, "unknown")


@lru_cache(maxsize=1)
def soc_info() -> SocInfo:
    """The SoC of this host; requires an activated backend (imports torch_npu)."""
    from dlinfer_ascend.runtime import ensure_runtime

    ensure_runtime()
    return classify(int(torch.npu.get_soc_version()))  # type: ignore[attr-defined]
