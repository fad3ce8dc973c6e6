"""Run greedy generation through ``lmdeploy.pipeline`` on a dlinfer device (tests, demo, benchmarks)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def engine_config(device_type: str = "cpu", **overrides: Any) -> Any:
    from lmdeploy import PytorchEngineConfig

    params: dict[str, Any] = dict(
        device_type=device_type,
        dtype="float32" if device_type == "cpu" else "auto",
        session_len=1024,
        max_batch_size=8,
        block_size=16,
        num_gpu_blocks=256,
        eager_mode=True,
    )
    params.update(overrides)
    return PytorchEngineConfig(**params)


@contextmanager
def open_pipeline(model: str | Path, config: Any) -> Iterator[Any]:
    from lmdeploy import pipeline

    pipe = pipeline(str(model), backend_config=config, log_level="ERROR")
    try:
        yield pipe
    finally:
        pipe.close()


def encode(pipe: Any, text: str) -> list[int]:
    """The token ids LMDeploy feeds the model for ``text`` (no chat template)."""
    return list(pipe.async_engine.tokenizer.encode(text))


def generate(pipe: Any, prompts: Sequence[str], max_new_tokens: int) -> list[list[int]]:
    """Greedy, ignore_eos, no chat template; all prompts submitted together (batched by the engine)."""
    from lmdeploy import GenerationConfig

    gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, top_k=1, ignore_eos=True)
    outs = pipe(list(prompts), gen_config=gen, do_preprocess=False)
    return [list(o.token_ids) for o in outs]


def generate_with_logits(
    pipe: Any, prompts: Sequence[str], max_new_tokens: int, topk: int = 5
) -> list[tuple[list[int], list[dict[int, float]]]]:
    """Like :func:`generate`, plus the engine's raw logits of its ``topk`` best tokens at every step
    (the engine must be configured with ``logprobs_mode="raw_logits"``)."""
    from lmdeploy import GenerationConfig

    gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, top_k=1, ignore_eos=True, logprobs=topk)
    outs = pipe(list(prompts), gen_config=gen, do_preprocess=False)
    return [(list(o.token_ids), [dict(step) for step in (o.logprobs or [])]) for o in outs]
