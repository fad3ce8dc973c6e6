"""Static check of the lowering table against a pinned torch_npu wheel's vendored torchair, read as files.

torch_npu 2.13.0 (the version docs/vendor-semantics.md §C was read from) ships torchair at
``torch_npu/dynamo/torchair``. Nothing from the wheel is imported: its sources are parsed.

- every GE (max-autotune) target of the table has a ``register_fx_node_ge_converter(torch.ops...)``;
- every entry with host lengths targets an op in ``_acl_concrete_graph/acl_graph.py:_REPLACE_FUNC_MAP`` (the
  ACL-graph replay-time host-argument updates, keyed by FX node target) whose ``updated_param_keys`` include
  the target parameter the lowering passes the host lengths in, as the list of graph inputs that
  ``get_update_ruler`` requires;
- the lowered FIA call's keyword arguments exist in torch_npu's meta registration of the op.

The wheel (44 MB) is cached in ``$DLINFER_WHEEL_CACHE`` (default ``~/.cache/dlinfer/wheels``), fetched once with
``pip download --no-deps``; the test skips, saying so, when it cannot be fetched.
"""

from __future__ import annotations

import ast
import glob
import os
import re
import subprocess
import sys
import zipfile
from functools import cache, lru_cache

import pytest

from dlinfer_ascend.lowering import GE_MODE, GE_SUBSTITUTES, TABLE, table

TORCH_NPU = "2.13.0"
TORCHAIR = "torch_npu/dynamo/torchair/"
CACHE = os.environ.get("DLINFER_WHEEL_CACHE", os.path.expanduser("~/.cache/dlinfer/wheels"))


@lru_cache(maxsize=1)
def _wheel() -> zipfile.ZipFile:
    pattern = os.path.join(CACHE, f"torch_npu-{TORCH_NPU}-*.whl")
    if not glob.glob(pattern):
        os.makedirs(CACHE, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               "3.11", "--platform", "manylinux_2_28_x86_64", f"torch_npu=={TORCH_NPU}", "-d", CACHE]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=300)
        except (subprocess.SubprocessError, OSError) as e:
            pytest.skip(f"torch_npu=={TORCH_NPU} wheel not cached in {CACHE} and pip download failed: {e}")
    return zipfile.ZipFile(sorted(glob.glob(pattern))[0])


def _text(path: str) -> str:
    return _wheel().read(path).decode()


@lru_cache(maxsize=1)
def converters() -> set[str]:
    """Every ``torch.ops.<ns>.<op>.<overload>`` torchair registers a GE converter for."""
    found: set[str] = set()
    for name in _wheel().namelist():
        if name.startswith(TORCHAIR) and name.endswith(".py"):
            found.update(re.findall(r"register_fx_node_ge_converter\(\s*(torch\.ops\.[\w.]+)\s*\)", _text(name)))
    return found


@lru_cache(maxsize=1)
def replay_map() -> dict[str, tuple[list[str], list[int]]]:
    """``_REPLACE_FUNC_MAP``: target -> (updated_param_keys, updated_param_indices)."""
    tree = ast.parse(_text(TORCHAIR + "_acl_concrete_graph/acl_graph.py"))
    out: dict[str, tuple[list[str], list[int]]] = {}
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "update"
                and isinstance(call.func.value, ast.Name) and call.func.value.id == "_REPLACE_FUNC_MAP"):
            continue
        for key, value in zip(call.args[0].keys, call.args[0].values, strict=True):
            kw = {k.arg: ast.literal_eval(k.value) for k in value.keywords
                  if k.arg in ("updated_param_keys", "updated_param_indices")}
            out[ast.unparse(key)] = (kw.get("updated_param_keys", []), kw.get("updated_param_indices", []))
    return out


def _fx_target(target: str) -> str:
    parts = target.split(".")
    return "torch.ops." + ".".join(parts if len(parts) == 3 else parts + ["default"])


def test_the_wheel_is_parsed() -> None:
    assert len(converters()) > 100, len(converters())  # hundreds in 2.13.0: an empty parse is a broken check
    assert "torch.ops.npu.npu_fused_infer_attention_score.default" in replay_map()


@pytest.mark.parametrize("op", sorted(table(GE_MODE)))
def test_every_ge_target_has_a_torchair_converter(op: str) -> None:
    entry = table(GE_MODE)[op]
    needed = entry.extras["ge_converters"]
    if entry.extras.get("aot_decomposed"):  # aten.linear: AOT autograd decomposes it; torchair sees t/mm/addmm/...
        import torch

        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{entry.target.split('.')[1]}",
                                                              "CompositeImplicitAutograd"), entry.target
    else:
        assert _fx_target(entry.target) in needed, "the GE converters must include the lowered target itself"
    missing = [c for c in needed if c not in converters()]
    assert not missing, f"{op}: no torchair GE converter for {missing} in torch_npu {TORCH_NPU}"


@pytest.mark.parametrize("op", sorted(op for op, e in TABLE.items() if not e.extras["ge_converters"]))
def test_entries_kept_out_of_ge_really_have_no_converter(op: str) -> None:
    """If torchair gains a converter for an ACL-only target, the GE table should take it: this flags it."""
    assert _fx_target(TABLE[op].target) not in converters()


@pytest.mark.parametrize("op", sorted(op for op, e in TABLE.items() if e.host_args))
def test_host_length_targets_are_updated_at_acl_graph_replay(op: str) -> None:
    entry = TABLE[op]
    keys, _ = replay_map().get(_fx_target(entry.target), (None, None))
    assert keys is not None, f"{op}: {entry.target} is not in torchair's _REPLACE_FUNC_MAP; host lengths would be baked"
    assert set(entry.host_args) <= set(keys), (op, sorted(entry.host_args), keys)


def test_acl_update_rule_takes_lists_of_graph_inputs_as_the_table_passes_them() -> None:
    """torchair's get_update_ruler: an updated keyword must be a list whose items are placeholders (or constants);
    anything else raises at compile time. The table's host-length entries pass int lists of graph inputs."""
    tree = ast.parse(_text(TORCHAIR + "_acl_concrete_graph/acl_graph.py"))
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "get_update_ruler")
    src = ast.unparse(fn)
    assert "isinstance(kwarg_value, (list, tuple))" in src and "placeholder_nodes.index(kwarg_i)" in src, src[:600]
    for op, entry in TABLE.items():
        if entry.host_args:
            assert entry.host_lists, f"{op}: torchair updates only list-typed host arguments"


def test_lowered_fia_keywords_exist_in_the_torch_npu_meta_signature() -> None:
    import torch
    from dlinfer.lowering import Args

    meta = ast.parse(_text("torch_npu/op_plugin/meta/_meta_registrations.py"))
    fn = next(n for n in ast.walk(meta) if isinstance(n, ast.FunctionDef)
              and n.name == "npu_fused_infer_attention_score_forward")
    params = {a.arg for a in fn.args.args + fn.args.kwonlyargs}
    t = torch.empty(2, 8, 64, dtype=torch.float16)
    cache = torch.empty(4, 16, 2, 64, dtype=torch.float16)
    names = ["q", "key_cache", "value_cache", "block_table", "seqlens_kv_cpu"]
    values = dict(zip(names, [_Val(n) for n in names], strict=True), scale=None, window=None, softcap=None,
                  alibi_slopes=None, kv_layout="NHD")
    metas = {"q": t, "key_cache": cache, "value_cache": cache, "seqlens_kv_cpu": torch.empty(2, dtype=torch.int32),
             "block_table": torch.empty(2, 4, dtype=torch.int32)}
    _, kwargs = TABLE["paged_decode_attention"].adapt(Args(values, metas))
    assert set(kwargs) <= params, sorted(set(kwargs) - params)


@cache
def _meta_signature(op: str) -> tuple[int, set[str]]:
    """(number of positional parameters, all parameter names) of torch_npu's meta registration of ``npu.<op>``
    (the function decorated ``@impl(m, "<op>")`` in ``op_plugin/meta/_meta_registrations.py``)."""
    meta = ast.parse(_text("torch_npu/op_plugin/meta/_meta_registrations.py"))
    for fn in ast.walk(meta):
        if isinstance(fn, ast.FunctionDef) and any(
                isinstance(d, ast.Call) and len(d.args) == 2 and isinstance(d.args[1], ast.Constant)
                and d.args[1].value == op for d in fn.decorator_list):
            return len(fn.args.args), {a.arg for a in fn.args.args + fn.args.kwonlyargs}
    raise AssertionError(f"no meta registration for npu.{op} in torch_npu {TORCH_NPU}")


def _metas() -> dict[str, dict]:
    """Example shapes per lowered op: the graph values each entry reads (D=128 so every route is taken)."""
    import torch

    h, i32 = torch.float16, torch.int32

    def e(*shape: int, dtype: torch.dtype = h) -> torch.Tensor:
        return torch.empty(*shape, dtype=dtype)

    cache, kv = e(4, 16, 2, 128), {"seqlens_kv_cpu": e(3, dtype=i32), "cu_seqlens_q_cpu": e(4, dtype=i32)}
    rope = {"q": e(5, 4, 128), "k": e(5, 2, 128), "cos": e(5, 128, dtype=torch.float32),
            "sin": e(5, 128, dtype=torch.float32)}
    return {
        "rms_norm": {"x": e(3, 64), "weight": e(64)},
        "add_rms_norm": {"x": e(3, 64), "residual": e(3, 64), "weight": e(64)},
        "rms_norm_w8a8": {"x": e(3, 64), "weight": e(64)},
        "add_rms_norm_w8a8": {"x": e(3, 64), "residual": e(3, 64), "weight": e(64)},
        "silu_and_mul": {"x": e(3, 64)},
        "dynamic_quant": {"x": e(3, 64)},
        "moe_gating_topk_softmax": {"logits": e(3, 8)},
        "apply_rotary_pos_emb": rope,
        "apply_rotary_pos_emb_inplace": rope,
        "linear": {"x": e(3, 64), "weight": e(32, 64)},
        "linear_w8a8": {"x_q": e(3, 64, dtype=torch.int8), "w_q": e(32, 64, dtype=torch.int8),
                        "x_scale": e(3, dtype=torch.float32), "w_scale": e(32, dtype=torch.float32)},
        "weight_quant_matmul": {"x": e(3, 256), "qweight": e(256, 4, dtype=i32), "scales": e(2, 32),
                                "qzeros": e(2, 32)},
        "fill_kv_cache": {"key": e(3, 2, 128), "value": e(3, 2, 128), "key_cache": cache, "value_cache": cache,
                          "slot_mapping": e(3, dtype=i32)},
        "paged_decode_attention": {"q": e(3, 4, 128), "key_cache": cache, "value_cache": cache,
                                   "block_table": e(3, 4, dtype=i32), **kv},
        "paged_prefill_attention": {"q": e(7, 4, 128), "key_cache": cache, "value_cache": cache,
                                    "block_table": e(3, 4, dtype=i32), **kv},
        "prefill_attention": {"q": e(7, 4, 128), "k": e(7, 2, 128), "v": e(7, 2, 128), **kv},
        "fused_moe": {"x": e(3, 32), "gate_up": e(4, 16, 32), "down": e(4, 32, 8), "topk_weights": e(3, 2),
                      "topk_ids": e(3, 2, dtype=i32)},
    }


CONSTANTS = {"paged_prefill_attention": {"max_seqlen_q": 4, "kv_layout": "NHD"},
             "prefill_attention": {"max_seqlen_q": 4}, "moe_gating_topk_softmax": {"topk": 2, "renormalize": True},
             "weight_quant_matmul": {"group_size": 128}, "paged_decode_attention": {"kv_layout": "NHD"},
             "fill_kv_cache": {"kv_layout": "NHD"}}


@pytest.mark.parametrize("op", sorted(table(GE_MODE)))
def test_ge_lowerings_call_torch_npu_ops_with_their_meta_signature(op: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every torch_npu op a GE lowering emits (the target and its glue kernels) is called with at most the positional
    arguments and only the keywords of torch_npu's meta registration of it; each is in the entry's GE converters."""
    from dlinfer.lowering import Args, Declined, Emitted
    from dlinfer.spec import SPECS

    calls: list[tuple[str, tuple, dict]] = []

    def record(a, target, *args, **kwargs):  # noqa: ANN001, ANN202
        calls.append((target, args, kwargs))
        return _Val(str(target))

    monkeypatch.setattr("dlinfer_ascend.lowering._call", record)
    entry = table(GE_MODE)[op]
    metas = _metas()[op]
    values = {p.name: p.default for p in SPECS[op].params}
    values.update({n: _Val(n) for n in metas}, **CONSTANTS.get(op, {}))
    adapted = entry.adapt(Args(values, metas))
    assert not isinstance(adapted, Declined), adapted
    if not isinstance(adapted, Emitted):
        calls.append((entry.target, *adapted))
    npu = [(t.split(".")[1], args, kwargs) for t, args, kwargs in calls if isinstance(t, str) and t.startswith("npu.")]
    assert npu or entry.target.startswith("aten."), calls
    for name, args, kwargs in npu:
        n_pos, params = _meta_signature(name)
        assert len(args) <= n_pos and set(kwargs) <= params, (name, len(args), sorted(set(kwargs) - params))
        assert f"torch.ops.npu.{name}.default" in entry.extras["ge_converters"], name


@pytest.mark.parametrize("op", sorted(GE_SUBSTITUTES))
def test_ge_substitutes_replace_converterless_targets(op: str) -> None:
    """A GE substitute stands in for an ACL-table target without a converter (or for an op the ACL table leaves to
    its eager kernels), and has a converter itself."""
    if op in TABLE:
        assert _fx_target(TABLE[op].target) not in converters()
    assert _fx_target(GE_SUBSTITUTES[op].target) in converters()


def test_the_acl_graph_stand_in_updates_the_keys_torchair_updates() -> None:
    """npu_sim/torchair.py:AclGraph models _REPLACE_FUNC_MAP's FIA entry: the same updated_param_keys."""
    import npu_sim.torchair as torchair_sim
    from npu_sim.attention import npu_fused_infer_attention_score

    keys, _ = replay_map()["torch.ops.npu.npu_fused_infer_attention_score.default"]
    assert list(torchair_sim.REPLACE_FUNC_MAP[npu_fused_infer_attention_score]) == keys

class _Val:
    """Stands in for an fx.Proxy (and its tracer): any attribute, call or item is another stand-in."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attr: str) -> _Val:
        return _Val(f"{self.name}.{attr}")

    def __call__(self, *args: object, **kwargs: object) -> _Val:
        return _Val(f"{self.name}()")

    def __getitem__(self, i: object) -> _Val:
        return _Val(f"{self.name}[{i}]")
