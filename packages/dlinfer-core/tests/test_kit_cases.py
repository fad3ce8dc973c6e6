"""The kit's option cases come from the spec: every option an op declares is exercised, no other."""

from __future__ import annotations

import pytest

from dlinfer.spec import SPECS
from dlinfer.testing import cases_for


@pytest.mark.parametrize("op", [name for name, spec in SPECS.items() if spec.options])
def test_small_cases_cover_exactly_the_declared_options(op: str) -> None:
    exercised = {c.option for c in cases_for(op, "small") if c.option is not None}
    assert exercised == set(SPECS[op].options)
    assert any(c.option is None for c in cases_for(op, "small")), "and the default behaviour"


@pytest.mark.parametrize("size", ["small", "large"])
def test_ops_without_options_have_no_option_cases(size: str) -> None:
    for op, spec in SPECS.items():
        if not spec.options:
            assert all(c.option is None for c in cases_for(op, size)), op
