"""Hugging Face transformers greedy generation: the oracle the LMDeploy path must reproduce."""

from __future__ import annotations

from pathlib import Path

import torch


def greedy(path: str | Path, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy continuation of each prompt (one at a time, fp32), mirroring LMDeploy's ``ignore_eos``:
    generation does not stop at EOS and the EOS ids are banned (LMDeploy turns stop words into bad words)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model.eval()
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
