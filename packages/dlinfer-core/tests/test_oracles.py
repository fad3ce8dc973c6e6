"""``dlinfer check`` on the reference backend compares it with independent float64 oracles, and that can fail."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from dlinfer.cli import main
from dlinfer.registry import REFERENCE, REGISTRY
from dlinfer.spec import SPECS
from dlinfer.testing.oracles import ORACLES, run_against_oracles, uncovered

CHEAP = ["rms_norm", "add_rms_norm", "silu_and_mul", "apply_rotary_pos_emb_inplace", "moe_gating_topk_softmax",
         "fill_kv_cache", "paged_decode_attention"]


def test_reference_agrees_with_the_oracles() -> None:
    results = run_against_oracles(ops=CHEAP, seed=3)
    assert {r.op for r in results} == set(CHEAP)
    bad = [(r.op, r.case, r.dtype, r.detail) for r in results if not r.ok]
    assert bad == []


def _wrong_rms_norm(x: torch.Tensor, weight: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * (weight.float() + 0.01)).to(x.dtype)


def _wrong_decode(fn: Any) -> Any:
    def decode(q: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        kwargs["scale"] = (kwargs.get("scale") or q.shape[-1] ** -0.5) * 1.05  # a 5 % softmax-scale error
        return fn(q, *args, **kwargs)

    return decode


def test_oracles_catch_a_wrong_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    REGISTRY.discover()
    ops = dict(REGISTRY.load_ops(REFERENCE))
    ops["rms_norm"] = _wrong_rms_norm
    ops["paged_decode_attention"] = _wrong_decode(ops["paged_decode_attention"])
    monkeypatch.setattr(REGISTRY.records[REFERENCE], "ops", ops)
    results = run_against_oracles(ops=["rms_norm", "paged_decode_attention"], seed=5)
    failed = {r.op for r in results if r.status == "fail"}
    assert failed == {"rms_norm", "paged_decode_attention"}


def test_check_cli_uses_the_oracles(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["check", "--backend", "reference", "--op", "silu_and_mul", "--op", "dynamic_quant", "--seed", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "against independent float64 oracles" in out
    assert "no oracle (not checked here" in out and "dynamic_quant" in out
    assert set(uncovered()) | set(ORACLES) == set(SPECS)
