"""Simulated tmo.apply_rotary (docs/vendor-semantics.md §3.2, TMO-1.3.2 manual; VMLU wrapper)."""

from __future__ import annotations

import torch

from ._contract import HALF, NotModelled, fail, same_dtype, tensor


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """x [..., R] fp32, cos/sin broadcastable [..., R] -> x*cos + rot(x)*sin."""
    if interleaved:  # adjacent pairs (x0, x1) -> (-x1, x0)
        pairs = x.unflatten(-1, (-1, 2))
        rot = torch.stack((-pairs[..., 1], pairs[..., 0]), -1).flatten(-2)
    else:  # "fold" / GPT-NeoX rotate-half
        half = x.shape[-1] // 2
        rot = torch.cat((-x[..., half:], x[..., :half]), -1)
    return x * cos + rot * sin


def apply_rotary(
    input: torch.Tensor,  # noqa: A002 - the documented name
    sin_cache: torch.Tensor,
    cos_cache: torch.Tensor,
    position_ids: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    interleaved: bool,
    discrete: bool,
    dynamic_ntk: bool,
    max_seqlen: int,
) -> torch.Tensor:
    """§3.2: rotates the first rotary_dim = sin_cache.shape[-1] channels of input in place and returns it.

    Modelled: pad mode input [batch, seq, heads, head_size] half/bf16 with position_ids None,
    cu_seqlens None, discrete False, dynamic_ntk False -> token s of every sequence uses table row s.
    Tables [rope_seqlen, rotary_dim], full width for both modes; rotary_dim even, <= head_size;
    head_size 2..256. Note the order: sin before cos. A non-contiguous input is refused: §3.2 does not say
    whether the in-place result is written through a strided view.
    """
    fn = "apply_rotary"
    tensor(fn, "input", input, ndim=(3, 4), dtypes=HALF)
    if not input.is_contiguous():  # §3.2 says nothing about strides: do not guess how a strided input is written
        raise fail(
            fn,
            "input",
            f"a strided view (strides {list(input.stride())}): in-place writes through "
            "non-contiguous input are not documented",
        )
    if input.dim() == 3 or cu_seqlens is not None or position_ids is not None or discrete or dynamic_ntk:
        raise NotModelled(f"torch_mlu_ops.{fn}: only pad mode with implicit positions (0..seq-1) is modelled")
    for name, tab in (("sin_cache", sin_cache), ("cos_cache", cos_cache)):
        tensor(fn, name, tab, ndim=2)
        same_dtype(fn, name, tab, input, "input")
    if sin_cache.shape != cos_cache.shape:
        raise fail(fn, "cos_cache", f"shape {list(cos_cache.shape)} != sin_cache {list(sin_cache.shape)}")
    _, seq, _, head = input.shape
    rdim = sin_cache.shape[-1]
    if not 2 <= head <= 256:
        raise fail(fn, "input", f"head_size {head} outside 2..256")
    if rdim % 2 or rdim > head or rdim == 0:
        raise fail(fn, "sin_cache", f"rotary_dim {rdim} must be even, > 0 and <= head_size {head}")
    if not isinstance(max_seqlen, int) or max_seqlen < seq:
        raise fail(fn, "max_seqlen", f"expected an int >= seq {seq}, got {max_seqlen!r}")
    if sin_cache.shape[0] < seq:
        raise fail(fn, "sin_cache", f"{sin_cache.shape[0]} rows < seq {seq}")
    cos = cos_cache[:seq].float()[None, :, None, :]
    sin = sin_cache[:seq].float()[None, :, None, :]
    input[..., :rdim] = _rotate(input[..., :rdim].float(), cos, sin, bool(interleaved)).to(input.dtype)
    return input
