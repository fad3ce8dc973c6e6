"""Hugging Face transformers greedy generation: the oracle the LMDeploy path must reproduce."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dlinfer_lmdeploy.testing.model_table import oracle_path


def load(path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Any:
    """The HF model of the tiny checkpoint at ``path`` (``model_table.oracle_path(path)``), eval mode, on ``device``."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(oracle_path(path)), dtype=dtype).to(device).eval()


Loader = Callable[..., Any]
"""``(path, dtype, device) -> model``, as :func:`load` (e.g. ``tiny_quant.load_oracle`` for quantised checkpoints)"""


def greedy(
    path: str | Path, prompts: list[list[int]], max_new_tokens: int, *, loader: Loader = load
) -> list[list[int]]:
    """Greedy continuation of each prompt (one at a time, fp32), mirroring LMDeploy's ``ignore_eos``:
    generation does not stop at EOS and the EOS ids are banned (LMDeploy turns stop words into bad words).
    ``path`` is the tiny checkpoint LMDeploy served; the model is ``loader(path, torch.float32, "cpu")``."""
    model = loader(path, torch.float32, "cpu")
    eos = model.config.eos_token_id
    banned = [eos] if isinstance(eos, int) else list(eos or [])
    outs = []
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids])
            y = model.generate(
                x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
                suppress_tokens=banned or None,
            )
            outs.append(y[0, len(ids) :].tolist())
    return outs


def greedy_batched(path: str | Path, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Like :func:`greedy`, but all prompts in one left-padded batch (one ``generate`` call). Differs from
    :func:`greedy` only where the model mixes sequences by design: dynamic NTK rope scales the rotary base of
    every sequence by the longest one (``max(position_ids) + 1`` over the batch)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(oracle_path(path)), dtype=torch.float32).eval()
    eos = model.config.eos_token_id
    banned = [eos] if isinstance(eos, int) else list(eos or [])
    width = max(map(len, prompts))
    x = torch.tensor([[0] * (width - len(ids)) + list(ids) for ids in prompts])
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts])
    with torch.no_grad():
        y = model.generate(
            x,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            suppress_tokens=banned or None,
        )
    return [row[width:].tolist() for row in y]


def teacher_forced(
    path: str | Path,
    runs: list[tuple[list[int], list[int]]],
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    loader: Loader = load,
) -> list[torch.Tensor]:
    """Hugging Face's logits for tokens generated elsewhere (e.g. by LMDeploy in bf16).

    For each ``(prompt_ids, generated_ids)``, one forward pass over ``prompt + generated`` gives the
    logits that predicted every generated token from exactly the prefix the other engine had:
    fp32 ``[len(generated), V]`` on ``device``, computed in ``dtype``. EOS is set to -inf, as LMDeploy
    bans it under ``ignore_eos``. The model is ``loader(path, dtype, device)`` (default: ``oracle_path(path)``).
    """
    model = loader(path, dtype, device)
    eos = model.config.eos_token_id
    banned = [eos] if isinstance(eos, int) else list(eos or [])
    out = []
    with torch.no_grad():
        for prompt, generated in runs:
            x = torch.tensor([prompt + generated], device=device)
            logits = model(x).logits[0, len(prompt) - 1 : len(prompt) - 1 + len(generated)].float()
            logits[:, banned] = float("-inf")
            out.append(logits)
    del model
    return out


def deficits_and_gaps(logits: torch.Tensor, chosen: list[int]) -> tuple[list[float], list[float]]:
    """Per step: best logit minus the chosen token's logit (0 for the argmax), and the top-1 minus top-2 gap
    (small gaps are near-ties, where low-precision arithmetic may legitimately pick the other token)."""
    top2 = logits.topk(2, dim=-1).values
    picked = logits.gather(1, torch.tensor(chosen, device=logits.device)[:, None])[:, 0]
    return (top2[:, 0] - picked).tolist(), (top2[:, 0] - top2[:, 1]).tolist()
