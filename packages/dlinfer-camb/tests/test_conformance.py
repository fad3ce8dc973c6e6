"""The dlinfer conformance kit for camb, run against the simulated torch_mlu_ops on the CPU (fp16 and bf16)."""

from __future__ import annotations

import pytest
import torch

from dlinfer.registry import REGISTRY
from dlinfer.spec import SPECS
from dlinfer.testing import format_table, run_conformance

DTYPES = (torch.float16, torch.bfloat16)
#: Options the camb kernels do not serve (documented NotImplementedError, reported as "unsupported").
UNSUPPORTED = {"softcap"}
#: Not provided by camb: fall back to the reference (no documented tmo W4A16 kernel).
NOT_PROVIDED = {"weight_quant_prepare", "weight_quant_matmul"}


@pytest.fixture(scope="module")
def results(sim_session: None) -> list:
    REGISTRY.discover(force=True)
    res = run_conformance("camb", dtypes=DTYPES, device="cpu")
    print("\n" + format_table(res))
    return res


def test_backend_declares_hnd_mlu() -> None:
    REGISTRY.discover(force=True)
    backend = REGISTRY.records["camb"].backend
    assert (backend.device_type, backend.kv_layout, backend.block_sizes) == ("mlu", "HND", (16,))
    assert backend.dist_backend == "cncl" and backend.slot_dtype == torch.int32


@pytest.mark.parametrize("op", sorted(set(SPECS) - NOT_PROVIDED))
def test_op_conforms(results: list, op: str) -> None:
    rows = [r for r in results if r.op == op]
    assert rows, f"no conformance runs for {op}"
    bad = [r for r in rows if not r.ok]
    assert not bad, format_table(bad)
    assert {r.dtype for r in rows if r.status == "pass"} == {"float16", "bfloat16"}
    for r in rows:
        option = r.case.split("-")
        if r.status == "unsupported":
            assert any(o in r.detail for o in UNSUPPORTED), r.detail
        elif any(o.startswith("cap") for o in option):
            pytest.fail(f"{op} {r.case}: softcap was served silently")
