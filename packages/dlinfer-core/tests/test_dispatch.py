"""Activation and dispatch: a real third-party plugin's ops are used, missing ones fall back to the reference.

Plugin scenarios run in one subprocess (see tests/plugin_fixtures); the signature checks run here.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from plugin_fixtures import plugin_env, register_command, register_scenarios

import dlinfer.ops
from dlinfer.spec import SPECS

GOOD_OPS = ("rms_norm", "silu_and_mul")

USE_GOOD = """
import dlinfer_test_goodcpu as good
good.CALLS.clear()                           # other scenarios of this interpreter used goodcpu before
from dlinfer.reference.ops import OPS as REF
x, w = torch.randn(3, 16), torch.randn(16)
y = ops.rms_norm(x, w)                       # the first call activates the auto-selected backend
a = torch.randn(4, 8)
s = ops.silu_and_mul(a)
lin = ops.linear(torch.randn(2, 8), torch.randn(4, 8))   # not implemented by goodcpu: reference
ops.linear(torch.randn(2, 8), torch.randn(4, 8))
dispatch.deactivate()
dlinfer.activate()                           # a second activation does not warn again
result = {
    "selected": dispatch.current().name,
    "calls": list(good.CALLS),
    "rms_norm_ok": torch.allclose(y, REF["rms_norm"](x, w, eps=1e-6)),
    "silu_ok": torch.allclose(s, REF["silu_and_mul"](a)),
    "linear_shape": list(lin.shape),
    "table_is_plugin": dispatch.TABLE.rms_norm is good.rms_norm,
    "fallback_is_reference": dispatch.TABLE.linear is REF["linear"],
    "fallbacks": list(dispatch.STATE.fallbacks),
    "kv_layout": dispatch.STATE.kv_layout,
}
"""

FIRST_CALL_LAYOUT = """
kc, vc = torch.zeros(2, 2, 4, 8), torch.zeros(2, 2, 4, 8)     # HND blocks [NB=2, Hkv=2, BS=4, D=8]
key, value = torch.randn(3, 2, 8), torch.randn(3, 2, 8)
slots = [5, 0, 3]
ops.fill_kv_cache(key, value, kc, vc, torch.tensor(slots))      # the process's first op call, no kv_layout
want_k, want_v = torch.zeros_like(kc), torch.zeros_like(vc)
for t, s in enumerate(slots):
    want_k[s // 4, :, s % 4], want_v[s // 4, :, s % 4] = key[t], value[t]
result = {"selected": dispatch.current().name, "ok": torch.equal(kc, want_k) and torch.equal(vc, want_v)}
"""

OLD_API = """
import dlinfer_test_oldapi as old
from dlinfer.reference.ops import OPS as REF
old.CALLS.clear()
qkv = torch.randn(5, 8 * 16)                              # q: 4 heads, k and v: 2 heads each, D = 16
q, k = qkv[:, :64].view(5, 4, 16), qkv[:, 64:96].view(5, 2, 16)   # strided views of one buffer
cos, sin = torch.randn(5, 8), torch.randn(5, 8)
want_q, want_k = REF["apply_rotary_pos_emb"](q, k, cos, sin, interleaved=False)
v_before = qkv[:, 96:].clone()
ops.apply_rotary_pos_emb_inplace(q, k, cos, sin)
x, r, w = torch.randn(3, 16), torch.randn(3, 16), torch.randn(16)
got = ops.add_rms_norm_w8a8(x, r, w)
want = REF["add_rms_norm_w8a8"](x, r, w, eps=1e-6)
result = {"calls": list(old.CALLS), "rotary_ok": torch.equal(q, want_q) and torch.equal(k, want_k),
          "v_untouched": torch.equal(qkv[:, 96:], v_before),
          "w8a8_ok": all(torch.equal(a, b) for a, b in zip(got, want)), "composed": list(dispatch.STATE.composed),
          "fallbacks": list(dispatch.STATE.fallbacks)}
"""

SCENARIOS: dict[str, dict[str, Any]] = {
    "use-good": {"code": USE_GOOD},
    "first-call-layout": {"code": FIRST_CALL_LAYOUT},
    "compiled-first-call-layout": {"code": FIRST_CALL_LAYOUT.replace(
        "ops.fill_kv_cache(key, value, kc, vc, torch.tensor(slots))",
        "torch.compile(lambda *a: ops.fill_kv_cache(*a), fullgraph=True)(key, value, kc, vc, torch.tensor(slots))")},
    "old-api": {"env": {"DLINFER_TEST_ENABLE": "oldapi", "DLINFER_BACKEND": "oldapi"}, "code": OLD_API},
    "strict-env": {"env": {"DLINFER_STRICT": "1"}, "code": "result = dlinfer.activate().name"},
    "strict-arg": {"code": "result = dlinfer.activate(strict=True).name"},
    "strict-env-0": {"env": {"DLINFER_STRICT": "0"}, "code": "result = dlinfer.activate().name"},
    "strict-env-false": {"env": {"DLINFER_STRICT": "False"}, "code": "result = dlinfer.activate().name"},
    "strict-env-off": {"env": {"DLINFER_STRICT": " off "}, "code": "result = dlinfer.activate().name"},
    "strict-env-yes": {"env": {"DLINFER_STRICT": "yes"}, "code": "result = dlinfer.activate().name"},
    "strict-env-bogus": {"env": {"DLINFER_STRICT": "maybe"}, "code": "result = dlinfer.activate().name"},
    "strict-reference": {"env": {"DLINFER_STRICT": "1", "DLINFER_BACKEND": "reference"},
                         "code": "result = [dlinfer.activate().name, dispatch.TABLE.rms_norm.__module__]"},
    "strict-first-call": {"env": {"DLINFER_STRICT": "1"},
                          "code": "ops.rms_norm(torch.randn(2, 8), torch.randn(8))"},
}


register_scenarios("dispatch", SCENARIOS)
_STATE = ["-c", "from dlinfer.dispatch import STATE; print(STATE.validate, STATE.full)"]
register_command("validate-bogus", _STATE, {"DLINFER_VALIDATE": "everything"})
register_command("validate-true", _STATE, {"DLINFER_VALIDATE": "true"})


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return plugin_env(tmp_path_factory).outcomes("dispatch")


def test_plugin_ops_are_used_and_results_correct(outcome):
    res = outcome["use-good"]
    assert res["error"] is None, res
    r = res["result"]
    assert r["selected"] == "goodcpu"
    assert r["calls"] == ["rms_norm", "silu_and_mul"]
    assert r["rms_norm_ok"] and r["silu_ok"] and r["linear_shape"] == [2, 4]
    assert r["table_is_plugin"], "the eager hot path must call the plugin's function directly"
    assert r["fallback_is_reference"]
    assert r["fallbacks"] == [op for op in SPECS if op not in GOOD_OPS]
    assert r["kv_layout"] == "HND"  # the backend's declared layout becomes the default


def test_missing_ops_warn_once_naming_backend_and_op(outcome):
    warns = outcome["use-good"]["warnings"]
    for op in SPECS:
        msg = f"RuntimeWarning: dlinfer backend 'goodcpu' does not implement '{op}'; using the reference implementation"
        # once per op, although linear was called twice and the backend was activated twice
        assert warns.count(msg) == (0 if op in GOOD_OPS else 1), op
    assert len(warns) == len(SPECS) - len(GOOD_OPS), warns


@pytest.mark.parametrize("scenario", ["strict-env", "strict-arg", "strict-first-call", "strict-env-yes"])
def test_strict_mode_refuses_backend_naming_missing_ops(outcome, scenario):
    res = outcome[scenario]
    assert res["error_type"] == "DlinferError", res
    msg = res["error"]
    assert "dlinfer backend 'goodcpu' (dlinfer-test-goodcpu 1.2.3) lacks ops" in msg and "strict" in msg
    missing = msg.split(" lacks ops ")[1].split(" and strict mode")[0].split(", ")
    assert missing == [op for op in SPECS if op not in GOOD_OPS]
    assert res["warnings"] == []


def test_strict_mode_accepts_complete_backend_and_zero_means_off(outcome):
    assert outcome["strict-reference"]["result"] == ["reference", "dlinfer.reference.norm"]
    assert outcome["strict-env-0"]["result"] == "goodcpu"


@pytest.mark.parametrize("scenario", ["strict-env-false", "strict-env-off"])
def test_strict_off_spellings(outcome, scenario):
    assert outcome[scenario]["error"] is None, outcome[scenario]
    assert outcome[scenario]["result"] == "goodcpu"


def test_strict_unknown_spelling_is_refused_naming_the_variable(outcome):
    res = outcome["strict-env-bogus"]
    assert res["error_type"] == "DlinferError", res
    assert "DLINFER_STRICT='maybe' is not understood" in res["error"] and "false" in res["error"]


VALIDATE_SPELLINGS = {"true": "full", "1": "full", "ON": "full", "full": "full", "shapes": "shapes", "Shapes": "shapes",
                      "false": "off", "0": "off", "no": "off", "off": "off", "": "off"}


@pytest.mark.parametrize("raw", list(VALIDATE_SPELLINGS))
def test_validate_env_spellings(raw):
    from dlinfer.dispatch import validation_mode

    assert validation_mode(raw) == VALIDATE_SPELLINGS[raw]


def test_validate_env_unknown_spelling_fails_at_import(tmp_path_factory):
    proc = plugin_env(tmp_path_factory).command("validate-bogus")
    assert proc.returncode != 0
    assert "DLINFER_VALIDATE='everything' is not understood; use off, shapes or full" in proc.stderr, proc.stderr
    proc = plugin_env(tmp_path_factory).command("validate-true")
    assert proc.returncode == 0 and proc.stdout.split() == ["True", "True"], proc.stdout + proc.stderr


# -- the public ops: real signatures and docstrings generated from the spec ------------------------------------------

@pytest.mark.parametrize("name", sorted(SPECS))
def test_public_op_has_spec_signature_and_docstring(name):
    fn = getattr(dlinfer.ops, name)
    spec = SPECS[name]
    params = list(inspect.signature(fn).parameters.values())
    assert [p.name for p in params] == [p.name for p in spec.params]
    for got, want in zip(params, spec.params):
        kind = inspect.Parameter.KEYWORD_ONLY if want.keyword_only else inspect.Parameter.POSITIONAL_OR_KEYWORD
        assert got.kind == kind, got.name
        if want.default is not None:
            assert got.default == want.default, got.name
        elif not want.has_default:
            assert got.default is inspect.Parameter.empty, got.name
    assert fn.__name__ == name and fn.__module__ == "dlinfer.ops"
    doc = inspect.getdoc(fn)
    assert doc and doc.startswith(spec.summary)
    for p in spec.params:
        assert f"    {p.name}: " in doc, p.name
    tensors = [p for p in spec.params if p.kind == "tensor" and p.shape and not isinstance(p.shape, str)]
    for p in tensors:  # shapes are documented
        assert "[" + ", ".join(p.shape) + "]" in doc, p.name


def test_rms_norm_signature_spelled_out():
    sig = inspect.signature(dlinfer.ops.rms_norm, eval_str=True)  # annotations resolve to real types
    assert str(sig) == "(x: torch.Tensor, weight: torch.Tensor, *, eps: float = 1e-06) -> torch.Tensor"
    assert torch.is_tensor(dlinfer.ops.rms_norm(torch.randn(2, 8), torch.ones(8)))


def test_first_cache_op_call_uses_the_backends_layout(outcome):
    """Before any activation, kv_layout=None must resolve to the HND backend's layout, not the NHD default."""
    for scenario in ("first-call-layout", "compiled-first-call-layout"):  # eager, and traced before activation
        res = outcome[scenario]
        assert res["error"] is None, res
        assert res["result"] == {"selected": "goodcpu", "ok": True}, scenario


def test_missing_ops_are_composed_from_the_plugins_own_ops(outcome):
    """An API-1.0 plugin gets the in-place rotary from its own out-of-place rotary (not the reference), and the
    fused norm+quant ops from its norm and dynamic_quant; the warning says "composed"."""
    res = outcome["old-api"]
    assert res["error"] is None, res
    r = res["result"]
    assert r["calls"] == ["apply_rotary_pos_emb", "add_rms_norm", "dynamic_quant"]
    assert r["rotary_ok"] and r["v_untouched"] and r["w8a8_ok"]
    assert r["composed"] == ["apply_rotary_pos_emb_inplace", "rms_norm_w8a8", "add_rms_norm_w8a8"]
    assert not set(r["composed"]) & set(r["fallbacks"])
    warns = res["warnings"]
    for op, parts in (("apply_rotary_pos_emb_inplace", "apply_rotary_pos_emb"),
                      ("rms_norm_w8a8", "rms_norm + dynamic_quant"),
                      ("add_rms_norm_w8a8", "add_rms_norm + dynamic_quant")):
        assert f"RuntimeWarning: dlinfer backend 'oldapi' does not implement '{op}'; composed from its own {parts}" \
            in warns, warns


def test_every_derived_op_has_a_composition():
    from dlinfer.compose import BUILDERS

    derived = {name for name, spec in SPECS.items() if spec.derived_from}
    assert derived == set(BUILDERS)
    for name in derived:
        assert all(part in SPECS and part != name for part in SPECS[name].derived_from)
