"""The reference backend: pure PyTorch, device-agnostic, every op of the spec.

It is the embedded default (device ``cpu``), the oracle of the conformance kit and the
fallback for ops a vendor backend lacks. Computation is in fp32 (fp64 for int8 GEMMs)
and results are returned in the dtype the spec states.
"""

from dlinfer.reference.ops import OPS

__all__ = ["OPS"]
