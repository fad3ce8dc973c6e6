"""Adaptor routes the small conformance cases do not reach, refusals, and mutation checks."""

from __future__ import annotations

import pytest
import torch
from dlinfer.registry import REFERENCE, REGISTRY
from dlinfer.testing.cases import Case
from dlinfer.testing.inputs import PagedSetup, cu_seqlens, paged_inputs, randn
from dlinfer.testing.runner import run_case

from dlinfer_ascend.ops import attention, moe

DTYPES = (torch.float16, torch.bfloat16)


def run(op: str, build, dtype: torch.dtype, accumulating: bool = True) -> None:  # noqa: ANN001
    case = Case(op, "route", build, accumulating=accumulating)
    r = run_case(case, dtype, REGISTRY.load_ops("ascend"), REGISTRY.load_ops(REFERENCE), device="cpu")
    assert r.status == "pass", f"{r.status} (seed {r.seed}): {r.detail}"


def paged_prefill(s: PagedSetup, causal: bool = True, window: int | None = None):  # noqa: ANN201
    def build(g: torch.Generator, dt: torch.dtype, layout: str) -> dict:
        a = paged_inputs(g, s, dt, layout)
        return {**a, "max_seqlen_q": max(s.q_lens), "max_seqlen_kv": max(s.kv_lens), "causal": causal,
                "window": window, "cu_seqlens_q_cpu": a["cu_seqlens_q"].clone(),
                "seqlens_kv_cpu": a["seqlens_kv"].clone(), "kv_layout": layout}

    return build


ROUTES = {
    "tnd-d128-bs16": PagedSetup((5, 1, 12), (9, 17, 40), 8, 2, 128, 128, 16),
    "tnd-qk192-v128": PagedSetup((3, 6), (30, 6), 4, 4, 192, 128, 32),
    "bsnd-d64-bs128": PagedSetup((5, 9), (200, 9), 4, 2, 64, 64, 128),
    "bsnd-d96-bs256": PagedSetup((7,), (300,), 4, 1, 96, 64, 256),
    "per-token-d64-bs32": PagedSetup((4, 2), (70, 2), 4, 2, 64, 64, 32),
    "all-single-token": PagedSetup((1, 1), (40, 3), 4, 2, 128, 128, 16),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("opts", [(True, None), (True, 5), (False, None)], ids=["causal", "win5", "noncausal"])
@pytest.mark.parametrize("route", list(ROUTES))
def test_paged_prefill_routes(route: str, opts: tuple, dtype: torch.dtype) -> None:
    causal, window = opts
    run("paged_prefill_attention", paged_prefill(ROUTES[route], causal, window), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_paged_prefill_takes_the_documented_fia_forms(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    orig = attention._fia

    def spy(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        seen.append(kw["input_layout"] + ("/q" if kw.get("actual_seq_lengths") is not None else ""))
        return orig(*a, **kw)

    monkeypatch.setattr(attention, "_fia", spy)
    for name in ("tnd-d128-bs16", "bsnd-d64-bs128", "per-token-d64-bs32"):
        run("paged_prefill_attention", paged_prefill(ROUTES[name]), dtype)
    assert seen == ["TND/q", "BSND/q", "BSND"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_decode_window_and_large_blocks(dtype: torch.dtype) -> None:
    s = PagedSetup((1, 1, 1), (300, 5, 129), 8, 2, 128, 128, 128)

    def build(g: torch.Generator, dt: torch.dtype, layout: str) -> dict:
        a = paged_inputs(g, s, dt, layout)
        return {"q": a["q"], "key_cache": a["key_cache"], "value_cache": a["value_cache"],
                "block_table": a["block_table"], "seqlens_kv": a["seqlens_kv"], "max_seqlen_kv": 300,
                "window": 33, "seqlens_kv_cpu": a["seqlens_kv"].clone(), "kv_layout": layout}

    run("paged_decode_attention", build, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_prefill_attention_d128_window(dtype: torch.dtype) -> None:
    lens = [17, 3, 40]

    def build(g: torch.Generator, dt: torch.dtype, _l: str) -> dict:
        t, cu = sum(lens), cu_seqlens(lens)
        return {"q": randn(g, t, 8, 128, dtype=dt), "k": randn(g, t, 2, 128, dtype=dt),
                "v": randn(g, t, 2, 128, dtype=dt), "cu_seqlens_q": cu, "max_seqlen_q": 64,
                "causal": True, "window": 6, "cu_seqlens_q_cpu": cu.clone()}

    run("prefill_attention", build, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_moe_over_the_group_list_limit(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(moe, "MAX_GROUP_LIST", 3)  # 8 experts -> chunks of 3, 3, 2

    def build(g: torch.Generator, dt: torch.dtype, _l: str) -> dict:
        t, e, k, h, i = 9, 8, 3, 32, 16
        ids = torch.rand(t, e, generator=g).argsort(-1)[:, :k].to(torch.int64)
        return {"x": randn(g, t, h, dtype=dt), "gate_up": randn(g, e, 2 * i, h, dtype=dt, scale=h**-0.5),
                "down": randn(g, e, h, i, dtype=dt, scale=i**-0.5),
                "topk_weights": torch.softmax(torch.randn(t, k, generator=g), -1).to(dt), "topk_ids": ids}

    run("fused_moe", build, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rotary_fused_kernel_on_a_partial_head(dtype: torch.dtype) -> None:
    def build(g: torch.Generator, dt: torch.dtype, _l: str) -> dict:
        t, d, r = 6, 192, 128
        ang = torch.rand(t, r // 2, generator=g) * 6
        ang = torch.cat((ang, ang), -1)
        return {"q": randn(g, t, 4, d, dtype=dt), "k": randn(g, t, 2, d, dtype=dt), "cos": ang.cos().to(dt),
                "sin": ang.sin().to(dt), "interleaved": False}

    run("apply_rotary_pos_emb", build, dtype, accumulating=False)


def _rope_tables(t: int, r: int, dt: torch.dtype, interleaved: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    ang = torch.rand(t, r // 2) * 6
    ang = ang.repeat_interleave(2, -1) if interleaved else torch.cat((ang, ang), -1)
    return ang.cos().to(dt), ang.sin().to(dt)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fused_qkv", [False, True], ids=["dense", "qkv"])
@pytest.mark.parametrize("t", [1, 6])
def test_rotary_inplace_kernel_routes(ops: dict, t: int, fused_qkv: bool, dtype: torch.dtype,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Dense q/k (a one-token slice of a qkv buffer is dense too) go to the in-place kernel as views of
    themselves; strided ones through a contiguous copy; v is never written."""
    from dlinfer_ascend.ops._kernels import K

    hq, hkv, d = 4, 2, 128
    seen: list[tuple[bool, bool]] = []
    real = K.npu.npu_apply_rotary_pos_emb

    def spy(query, key, *rest):  # noqa: ANN001, ANN202
        seen.append((query.data_ptr() == q.data_ptr(), key.data_ptr() == k.data_ptr()))
        return real(query, key, *rest)

    monkeypatch.setattr(K.npu, "npu_apply_rotary_pos_emb", spy)
    if fused_qkv:
        buf = torch.randn(t, (hq + 2 * hkv) * d).to(dtype)
        q, k = buf[:, : hq * d].view(t, hq, d), buf[:, hq * d : (hq + hkv) * d].view(t, hkv, d)
    else:
        buf = None
        q, k = torch.randn(t, hq, d).to(dtype), torch.randn(t, hkv, d).to(dtype)
    before = (q.clone(), k.clone(), None if buf is None else buf.clone())
    cos, sin = _rope_tables(t, d, dtype)
    want_q, want_k = REGISTRY.load_ops(REFERENCE)["apply_rotary_pos_emb"](before[0], before[1], cos, sin,
                                                                          interleaved=False)
    assert ops["apply_rotary_pos_emb_inplace"](q, k, cos, sin, interleaved=False) is None
    direct = not fused_qkv or t == 1
    assert seen == [(direct, direct)]
    torch.testing.assert_close(q, want_q, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(k, want_k, rtol=2e-2, atol=2e-2)
    if buf is not None:
        assert torch.equal(buf[:, (hq + hkv) * d :], before[2][:, (hq + hkv) * d :])


def test_rotary_inplace_serves_a_strided_last_dim(ops: dict) -> None:
    t, d = 3, 64
    q, k = torch.randn(t, 2, 2 * d).half()[..., ::2], torch.randn(t, 1, 2 * d).half()[..., 1::2]
    cos, sin = _rope_tables(t, d, torch.float16)
    want = REGISTRY.load_ops(REFERENCE)["apply_rotary_pos_emb"](q.clone(), k.clone(), cos, sin, interleaved=False)
    ops["apply_rotary_pos_emb_inplace"](q, k, cos, sin, interleaved=False)
    torch.testing.assert_close((q, k), want, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rotary_inplace_partial_head_on_the_fused_kernel(dtype: torch.dtype) -> None:
    def build(g: torch.Generator, dt: torch.dtype, _l: str) -> dict:
        t, hq, hkv, d, r = 6, 4, 2, 192, 128
        qkv = randn(g, t, (hq + 2 * hkv) * d, dtype=dt)
        cos, sin = _rope_tables(t, r, dt)
        return {"q": qkv[:, : hq * d].view(t, hq, d), "k": qkv[:, hq * d : (hq + hkv) * d].view(t, hkv, d),
                "cos": cos, "sin": sin, "interleaved": False}

    run("apply_rotary_pos_emb_inplace", build, dtype, accumulating=False)


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_linear_w8a8_output_dtypes_with_bias(out_dtype: torch.dtype) -> None:
    def build(g: torch.Generator, dt: torch.dtype, _l: str) -> dict:
        return {"x_q": torch.randint(-127, 128, (2, 3, 64), generator=g, dtype=torch.int8),
                "w_q": torch.randint(-127, 128, (24, 64), generator=g, dtype=torch.int8),
                "x_scale": torch.rand(2, 3, generator=g) * 0.01 + 1e-3,
                "w_scale": torch.rand(24, generator=g) * 0.01 + 1e-3,
                "bias": randn(g, 24, dtype=out_dtype), "out_dtype": out_dtype}

    run("linear_w8a8", build, torch.float16)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_weight_quant_per_channel(dtype: torch.dtype) -> None:
    from dlinfer.testing.inputs import awq_pack

    def build(g: torch.Generator, dt: torch.dtype, _l: str) -> dict:
        n_in, n_out = 64, 32
        q = torch.randint(0, 16, (n_in, n_out), generator=g)
        z = torch.randint(0, 16, (1, n_out), generator=g)
        return {"x": randn(g, 5, n_in, dtype=dt), "qweight": awq_pack(q), "qzeros": awq_pack(z),
                "scales": (torch.rand(1, n_out, generator=g) * 0.02 + 0.005).to(dt), "bias": None,
                "group_size": n_in}

    run("weight_quant_matmul", build, dtype)


# -- refusals ------------------------------------------------------------------------------------
def test_refusals_name_the_option(ops: dict) -> None:
    g = torch.Generator().manual_seed(0)
    s = PagedSetup((2,), (20,), 4, 2, 64, 64, 16)
    a = paged_inputs(g, s, torch.float16, "HND")
    common = dict(max_seqlen_kv=20, seqlens_kv_cpu=a["seqlens_kv"])
    with pytest.raises(NotImplementedError, match="kv_layout.*ascend"):
        ops["paged_decode_attention"](a["q"][:1], a["key_cache"], a["value_cache"], a["block_table"],
                                      a["seqlens_kv"], kv_layout="HND", **common)
    with pytest.raises(NotImplementedError, match="kv_layout"):
        ops["fill_kv_cache"](a["q"][:, :2], a["q"][:, :2], a["key_cache"], a["value_cache"],
                             torch.zeros(2, dtype=torch.int32), kv_layout="HND")
    a = paged_inputs(g, PagedSetup((2,), (20,), 4, 2, 64, 64, 24), torch.float16, "NHD")
    with pytest.raises(NotImplementedError, match="block_size"):
        ops["paged_decode_attention"](a["q"][:1], a["key_cache"], a["value_cache"], a["block_table"],
                                      a["seqlens_kv"], **common)
    a = paged_inputs(g, s, torch.float32, "NHD")
    with pytest.raises(NotImplementedError, match="float32"):
        ops["paged_decode_attention"](a["q"][:1], a["key_cache"], a["value_cache"], a["block_table"],
                                      a["seqlens_kv"], **common)
    q = torch.randn(4, 2, 64, dtype=torch.float16)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(NotImplementedError, match="'window'.*causal=False"):
        ops["prefill_attention"](q, q, q, cu, max_seqlen_q=4, causal=False, window=2)
    with pytest.raises(NotImplementedError, match="softcap"):
        ops["prefill_attention"](q, q, q, cu, max_seqlen_q=4, softcap=30.0)
    q3 = torch.randn(4, 2, 320, dtype=torch.float16)
    with pytest.raises(NotImplementedError, match="head_size"):
        ops["prefill_attention"](q3, q3, q3, cu, max_seqlen_q=4)
    with pytest.raises(NotImplementedError, match="group_size"):
        ops["weight_quant_prepare"](torch.zeros(64, 4, dtype=torch.int32), torch.ones(4, 32).half(),
                                    torch.zeros(4, 4, dtype=torch.int32), group_size=16)


# -- the tests can fail --------------------------------------------------------------------------
def test_fia_default_scale_would_be_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Relying on FIA's default scale (1.0) instead of 1/sqrt(D) must fail the comparison."""
    from dlinfer_ascend.ops import _common

    monkeypatch.setattr(attention, "softmax_scale", lambda scale, d: 1.0 if scale is None else float(scale))
    s = PagedSetup((1, 1), (30, 7), 4, 2, 64, 64, 16)

    def build(g: torch.Generator, dt: torch.dtype, layout: str) -> dict:
        a = paged_inputs(g, s, dt, layout)
        return {"q": a["q"], "key_cache": a["key_cache"], "value_cache": a["value_cache"],
                "block_table": a["block_table"], "seqlens_kv": a["seqlens_kv"], "max_seqlen_kv": 30,
                "seqlens_kv_cpu": a["seqlens_kv"].clone(), "kv_layout": layout}

    r = run_case(Case("paged_decode_attention", "mut", build, accumulating=True), torch.float16,
                 REGISTRY.load_ops("ascend"), REGISTRY.load_ops(REFERENCE), device="cpu")
    assert r.status == "fail" and _common.softmax_scale(None, 64) == 0.125


def test_per_sequence_q_lengths_to_tnd_would_be_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Passing per-sequence q lengths where FIA TND wants cumulative ones raises in the simulator."""
    from npu_sim import NpuContractError

    orig = attention._fia

    def wrong(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        if kw["input_layout"] == "TND":
            cum = kw["actual_seq_lengths"]
            kw["actual_seq_lengths"] = torch.cat((cum[:1], cum[1:] - cum[:-1]))
        return orig(*a, **kw)

    monkeypatch.setattr(attention, "_fia", wrong)
    g = torch.Generator().manual_seed(3)
    a = paged_inputs(g, ROUTES["tnd-d128-bs16"], torch.float16, "NHD")
    with pytest.raises(NpuContractError, match="cumulative|end at"):
        REGISTRY.load_ops("ascend")["paged_prefill_attention"](
            a["q"], a["key_cache"], a["value_cache"], a["block_table"], a["cu_seqlens_q"], a["seqlens_kv"],
            max_seqlen_q=12, max_seqlen_kv=40, cu_seqlens_q_cpu=a["cu_seqlens_q"],
            seqlens_kv_cpu=a["seqlens_kv"])


def test_host_mirrors_are_passed_through_not_copied(ops: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """With host mirrors given, FIA receives them as they are: no per-layer device->host copy."""
    from dlinfer_ascend.ops._kernels import K

    seen: list = []
    fia = K.npu.npu_fused_infer_attention_score

    def spy(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        seen.append((kw.get("actual_seq_lengths"), kw["actual_seq_lengths_kv"]))
        return fia(*a, **kw)

    monkeypatch.setattr(K.npu, "npu_fused_infer_attention_score", spy)
    a = paged_inputs(torch.Generator().manual_seed(1), ROUTES["tnd-d128-bs16"], torch.float16, "NHD")
    kv_cpu, cu_cpu = a["seqlens_kv"].clone(), a["cu_seqlens_q"].clone()
    ops["paged_decode_attention"](a["q"][:3], a["key_cache"], a["value_cache"], a["block_table"], a["seqlens_kv"],
                                  max_seqlen_kv=40, seqlens_kv_cpu=kv_cpu)
    ops["paged_prefill_attention"](a["q"], a["key_cache"], a["value_cache"], a["block_table"], a["cu_seqlens_q"],
                                   a["seqlens_kv"], max_seqlen_q=12, max_seqlen_kv=40, cu_seqlens_q_cpu=cu_cpu,
                                   seqlens_kv_cpu=kv_cpu)
    assert seen[0][0] is None and seen[0][1] is kv_cpu
    assert seen[1][1] is kv_cpu and seen[1][0].data_ptr() == cu_cpu[1:].data_ptr()  # a view: cumulative ends


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("window", [None, 6])
def test_prefill_keeps_one_growing_mask_not_one_per_prompt_length(ops: dict, dtype: torch.dtype, window: int | None,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps with different longest prompts share one mask per (dtype, device, window), regrown only when a
    longer prompt arrives; every step still matches the reference."""
    from dlinfer_ascend.ops._kernels import K

    masks: list[torch.Tensor] = []
    orig = K.atb._npu_flash_attention

    def spy(q, k, v, mask, *rest):  # noqa: ANN001, ANN002, ANN202
        masks.append(mask)
        return orig(q, k, v, mask, *rest)

    monkeypatch.setattr(K.atb, "_npu_flash_attention", spy)
    monkeypatch.setattr(attention, "_ATB_MASKS", {})
    steps = [(5, 3), (40, 2), (17,), (300, 9), (33, 1), (290,)]
    for lens in steps:
        def build(g: torch.Generator, dt: torch.dtype, _layout: str, lens: tuple = lens) -> dict:
            t = sum(lens)
            return {"q": randn(g, t, 4, 64, dtype=dt), "k": randn(g, t, 2, 64, dtype=dt),
                    "v": randn(g, t, 2, 64, dtype=dt), "cu_seqlens_q": cu_seqlens(lens), "max_seqlen_q": max(lens),
                    "causal": True, "window": window, "cu_seqlens_q_cpu": cu_seqlens(lens)}

        run("prefill_attention", build, dtype)
    sizes = [m.shape[0] for m in masks]
    assert len({m.data_ptr() for m in masks}) == 2, sizes  # built for 5 (128 rows), regrown once for 300
    assert sizes == sorted(sizes) and sizes[-1] >= 300, sizes  # grown, never shrunk
    assert max(sizes) < 2 * 300 + 128 and len(attention._ATB_MASKS) == 1
