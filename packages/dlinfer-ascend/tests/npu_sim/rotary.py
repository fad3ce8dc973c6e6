"""Simulated rotary kernels (npu_apply_rotary_pos_emb, npu_rotary_mul)."""

from __future__ import annotations

import torch

from ._contract import FLOAT_DTYPES, Unconfirmed, check, device_tensor


def _rot_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def _rot_interleave(x: torch.Tensor) -> torch.Tensor:
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def npu_apply_rotary_pos_emb(query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor,
                             sin: torch.Tensor, layout: str = "BSND", rotary_mode: str = "half"
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """docs/vendor-semantics.md §2.3 (OP-YAML; OP-DOC:apply_rotary_pos_emb; ApplyRotaryPosEmbNpuOpApi.cpp).

    In place on query/key (returns them). A2/A3: layout BSND or TND, rotary_mode 'half' only,
    D in {64, 128}, cos/sin D == q D (whole last dim rotated), one dtype for all four, no empties.
    Whether the in-place result is written through a non-contiguous (strided) query/key is not documented
    (§2.3 is silent on strides): such inputs raise Unconfirmed rather than guess either way.
    """
    fn = "npu_apply_rotary_pos_emb"
    check(layout in ("BSND", "TND"), fn, f"layout {layout!r} not supported on A2/A3 (BSND, TND)")
    check(rotary_mode == "half", fn, f"rotary_mode {rotary_mode!r}: A2/A3 support only 'half'")
    rank = 4 if layout == "BSND" else 3
    for name, t in (("query", query), ("key", key), ("cos", cos), ("sin", sin)):
        device_tensor(fn, name, t, dtypes=FLOAT_DTYPES, dim=rank)
        check(t.numel() > 0, fn, f"{name} must not be empty")
        check(t.dtype == query.dtype, fn, f"{name} dtype {t.dtype} != query dtype {query.dtype}")
    for name, t in (("query", query), ("key", key)):
        if not t.is_contiguous():
            raise Unconfirmed(f"{fn}: {name} is a strided view (strides {tuple(t.stride())}); in-place writes "
                              "through strided views are not documented (docs/vendor-semantics.md §2.3)")
    d = query.shape[-1]
    check(d in (64, 128), fn, f"head dim {d} unsupported on A2/A3 (64 or 128)")
    check(key.shape[-1] == d and cos.shape[-1] == d and sin.shape[-1] == d, fn,
          "key/cos/sin last dim must equal query head dim (the whole last dim is rotated)")
    lead = query.shape[:-2]
    check(key.shape[:-2] == lead, fn, f"key leading dims {tuple(key.shape)} vs query {tuple(query.shape)}")
    want = (*lead, 1, d)
    check(tuple(cos.shape) == want and tuple(sin.shape) == want, fn,
          f"cos/sin must be {want} for layout {layout}, got {tuple(cos.shape)}/{tuple(sin.shape)}")
    c, s = cos.float(), sin.float()
    for x in (query, key):
        xf = x.float()
        x.copy_((xf * c + _rot_half(xf) * s).to(x.dtype))
    return query, key


def npu_rotary_mul(x: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor, rotary_mode: str = "half",
                   rotate: torch.Tensor | None = None) -> torch.Tensor:
    """docs/vendor-semantics.md §2.4 (OP-YAML; OP-DOC:npu_rotary_mul).

    out = x·r1 + R(x)·r2 (new tensor); R = rotate-half ('half') or pairwise ('interleave').
    x 3-D/4-D; r1/r2 broadcast to x. Mixed dtypes are not listed by the doc: required equal here.
    """
    fn = "npu_rotary_mul"
    check(rotate is None, fn, "rotate matrix is not modelled")
    check(rotary_mode in ("half", "interleave"), fn, f"rotary_mode {rotary_mode!r} unknown")
    device_tensor(fn, "self", x, dtypes=FLOAT_DTYPES)
    check(x.dim() in (3, 4), fn, f"self must be 3-D or 4-D, got {x.dim()}-D")
    check(x.shape[-1] % 2 == 0, fn, "last dim must be even")
    for name, r in (("r1", r1), ("r2", r2)):
        device_tensor(fn, name, r, dtypes=(x.dtype,), dim=x.dim())
        check(r.shape[-1] == x.shape[-1], fn, f"{name} last dim {r.shape[-1]} != {x.shape[-1]}")
        try:
            torch.broadcast_shapes(r.shape, x.shape)
        except RuntimeError:
            check(False, fn, f"{name} shape {tuple(r.shape)} does not broadcast to {tuple(x.shape)}")
    xf = x.float()
    rot = _rot_half(xf) if rotary_mode == "half" else _rot_interleave(xf)
    return (xf * r1.float() + rot * r2.float()).to(x.dtype)
