"""The dlinfer conformance kit for the ascend backend, against the simulator, on CPU (fp16, bf16)."""

from __future__ import annotations

import pytest
import torch
from dlinfer.registry import REFERENCE, REGISTRY
from dlinfer.testing.runner import plan, run_case

DTYPES = (torch.float16, torch.bfloat16)
RUNS = plan("ascend", dtypes=DTYPES)
IDS = [f"{c.op}-{c.name}-{str(dt).replace('torch.', '')}" for c, dt, _ in RUNS]

#: Options the adaptor refuses on purpose (the kernels do not serve them).
REFUSED = {"softcap", "alibi_slopes"}


@pytest.mark.parametrize("run", RUNS, ids=IDS)
def test_conformance(run: tuple) -> None:
    case, dtype, layout = run
    r = run_case(case, dtype, REGISTRY.load_ops("ascend"), REGISTRY.load_ops(REFERENCE), device="cpu",
                 layout=layout,
                 prepare_metadata=REGISTRY.records["ascend"].backend.prepare_metadata)
    if r.status == "unsupported":
        assert case.option in REFUSED, f"unexpected refusal of {case.option}: {r.detail}"
        assert "ascend" in r.detail
        return
    assert r.status == "pass", f"{r.status} (seed {r.seed}): {r.detail}"


def test_every_op_is_implemented_and_covered() -> None:
    from dlinfer.spec import SPECS

    ops = REGISTRY.load_ops("ascend")
    assert set(ops) == set(SPECS)
    covered = {c.op for c, _, _ in RUNS} | {"weight_quant_prepare"}
    assert covered == set(SPECS)
