"""The conformance kit as pytest tests (collected when ``--dlinfer-backend`` is given)."""

from __future__ import annotations

import pytest

from dlinfer.registry import REFERENCE, REGISTRY
from dlinfer.testing.runner import run_case


@pytest.mark.dlinfer_conformance
def test_conformance(dlinfer_run, dlinfer_backend, request: pytest.FixtureRequest) -> None:  # noqa: ANN001
    case, dtype, layout = dlinfer_run
    ops = REGISTRY.load_ops(dlinfer_backend)
    backend = REGISTRY.records[dlinfer_backend].backend
    device = request.config.getoption("--dlinfer-device") or backend.device_type
    result = run_case(case, dtype, ops, REGISTRY.load_ops(REFERENCE), device=device, layout=layout,
                      prepare_metadata=backend.prepare_metadata)
    if result.status == "unsupported":
        pytest.skip(result.detail)
    assert result.status == "pass", f"{result.status} (seed {result.seed}): {result.detail}"
