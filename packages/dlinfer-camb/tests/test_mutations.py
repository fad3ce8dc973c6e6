"""The tests can fail: adaptors with the classic tmo mistakes are caught by the kit against the simulator."""

from __future__ import annotations

import torch

from dlinfer.registry import REFERENCE, REGISTRY
from dlinfer.testing import cases_for, run_case
from dlinfer_camb.ops import attention, moe
from dlinfer_camb.ops._common import K


def _status(op: str, impl, name_part: str = "", dtype: torch.dtype = torch.float16) -> list[str]:
    REGISTRY.discover()
    reference = REGISTRY.load_ops(REFERENCE)
    cases = [c for c in cases_for(op) if name_part in c.name]
    return [run_case(c, dtype, {op: impl}, reference, layout="HND", seed=7).status for c in cases]


def test_cos_sin_swapped_is_caught(camb_ops: dict) -> None:
    def broken(q, k, cos, sin, *, interleaved):
        rot = lambda x: K.tmo.apply_rotary(x.clone().unsqueeze(0), cos, sin, None, None, interleaved, False,  # noqa: E731
                                           False, x.shape[0]).squeeze(0)
        return rot(q), rot(k)

    assert set(_status("apply_rotary_pos_emb", broken)) == {"fail"}


def test_inplace_rotary_of_a_copy_is_caught(camb_ops: dict) -> None:
    """Rotating a contiguous copy of strided q/k (slices of a fused qkv buffer) without writing it back."""
    def broken(q, k, cos, sin, *, interleaved):
        for x in (q, k):
            K.tmo.apply_rotary(x.contiguous().unsqueeze(0), sin.to(x.dtype), cos.to(x.dtype), None, None,
                               interleaved, False, False, x.shape[0])

    strided = [c for c in cases_for("apply_rotary_pos_emb_inplace") if c.name.endswith("-qkv") and
               not c.name.startswith("T1-")]
    statuses = [run_case(c, torch.float16, {"apply_rotary_pos_emb_inplace": broken}, REGISTRY.load_ops(REFERENCE),
                         layout="HND", seed=7).status for c in strided]
    assert strided and set(statuses) == {"fail"}
    assert set(_status("apply_rotary_pos_emb_inplace", camb_ops["apply_rotary_pos_emb_inplace"], "-qkv")) == {"pass"}


def test_window_off_by_one_is_caught(camb_ops: dict, monkeypatch) -> None:
    monkeypatch.setattr(attention, "window_left", lambda op, w: -1 if w is None else w)
    assert "fail" in _status("prefill_attention", camb_ops["prefill_attention"], "win")  # cases with q_len > window


def test_cumulative_context_lens_are_caught(camb_ops: dict, monkeypatch) -> None:
    real = K.tmo.single_query_cached_kv_attn

    def cumulative_lens(q, kc, vc, out, tables, lens, *rest):
        return real(q, kc, vc, out, tables, torch.cumsum(lens, 0, dtype=torch.int32), *rest)

    monkeypatch.setattr(K.tmo, "single_query_cached_kv_attn", cumulative_lens)
    statuses = _status("paged_decode_attention", camb_ops["paged_decode_attention"], "bs16")
    assert statuses and "pass" not in statuses and "error" in statuses


def test_cumulative_group_counts_are_caught(camb_ops: dict, monkeypatch) -> None:
    real = K.tmo.group_gemm
    monkeypatch.setattr(K.tmo, "group_gemm", lambda a, b, m, *rest: real(a, b, m.cumsum(0, dtype=torch.int32), *rest))
    assert set(_status("fused_moe", moe.fused_moe)) == {"error"}


def test_hnd_cache_written_as_nhd_is_caught(camb_ops: dict) -> None:
    def broken(key, value, key_cache, value_cache, slot_mapping, *, kv_layout):
        K.tmo.reshape_paged_cache(key, value, key_cache.transpose(1, 2), value_cache.transpose(1, 2),
                                  slot_mapping.to(torch.int32))

    assert set(_status("fill_kv_cache", broken)) <= {"fail", "error"}
