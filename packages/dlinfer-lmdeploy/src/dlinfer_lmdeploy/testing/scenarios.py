"""The end-to-end scenarios, one table for every device.

The CPU tests run each scenario with the reference backend in fp32 and require the exact
tokens of Hugging Face's greedy ``generate``; the GPU tests run the same table with the
maca plugin in bf16, in eager and in graph mode, and check every generated token against
Hugging Face's logits on the same prefix (``hf_oracle.teacher_forced``).

A scenario is a list of phases; each phase submits its prompts together (the engine
batches them) and waits for all of them. Op-call expectations apply to the last phase,
so that an earlier phase can prepare state (the prefix cache) for it.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from dlinfer_lmdeploy.testing.model_table import ROWS
from dlinfer_lmdeploy.testing.tiny_models import MOE_KINDS, SLIDING_WINDOW

PROMPTS = (
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "In a hole in the ground there lived a hobbit. Not a nasty, dirty, wet hole.",
)
_PREFIX = "In a hole in the ground there lived a hobbit, not a nasty dirty wet hole. "  # > 3 blocks of 16
_CHUNKED = "Chunked prefill splits a long prompt into pieces that each attend to the earlier ones. " * 2


@dataclass(frozen=True)
class Scenario:
    name: str
    model: str
    """tiny model kind (``model_table.BY_KIND``)"""
    phases: tuple[tuple[str, ...], ...]
    new_tokens: int
    engine: dict[str, Any] = field(default_factory=dict)
    """``PytorchEngineConfig`` overrides on top of ``runner.engine_config``"""
    min_calls: dict[str, int] = field(default_factory=dict)
    """op (or ``"a+b"``: the sum over several ops) -> least number of ``dlinfer.ops`` calls in the last phase"""
    no_calls: tuple[str, ...] = ()
    """ops that must not be called in the last phase"""
    doc: str = ""

    def check_calls(self, calls: collections.Counter[str]) -> None:
        """Raises AssertionError naming the op when the last phase's op calls miss an expectation."""
        for ops, least in self.min_calls.items():
            n = sum(calls[op] for op in ops.split("+"))
            assert n >= least, f"{self.name}: {ops} called {n} times, expected >= {least}"
        for op in self.no_calls:
            assert calls[op] == 0, f"{self.name}: {op} called {calls[op]} times, expected none"


LLM_KINDS = tuple(row.kind for row in ROWS if row.modality == "LLM")
"""the text rows of the model table, one ``concurrent_<kind>`` scenario each"""


def _concurrent(kind: str) -> Scenario:
    calls = {
        "prefill_attention": 1,
        "paged_decode_attention": 1,
        "fill_kv_cache": 1,
        "linear": 1,
        "rms_norm+add_rms_norm": 1,
        "apply_rotary_pos_emb+apply_rotary_pos_emb_inplace": 1,
    }
    if kind in MOE_KINDS:
        calls.update(moe_gating_topk_softmax=1, fused_moe=1)
    else:
        calls.update(silu_and_mul=1)
    return Scenario(
        f"concurrent_{kind}",
        kind,
        (PROMPTS, PROMPTS[1:2]),
        12,
        min_calls=calls,
        no_calls=("paged_prefill_attention",),
        doc="prompts of different lengths batched together (varlen prefill without history, then decode); "
        "then one request alone",
    )


SCENARIOS: tuple[Scenario, ...] = (
    *(_concurrent(kind) for kind in LLM_KINDS),
    Scenario(
        "prefix_caching",
        "llama",
        ((_PREFIX + "Filled with",), (_PREFIX + "It was a hobbit-hole",)),
        8,
        engine={"enable_prefix_caching": True},
        min_calls={"paged_prefill_attention": 1},
        doc="a second prompt sharing a 3-block prefix reuses the cached blocks: paged prefill over history",
    ),
    Scenario(
        "chunked_prefill",
        "qwen2",
        ((_CHUNKED,),),
        8,
        engine={"max_prefill_token_num": 16},
        min_calls={"paged_prefill_attention": 5},
        doc="a 170-token prompt prefilled in chunks of 16 tokens, each attending to the earlier chunks",
    ),
    Scenario(
        "long_run",
        "llama",
        (("Once upon a time, a", "Far away"),),
        220,
        min_calls={"paged_decode_attention": 200},
        doc="block size 16, ~20-token prompts + 220 new tokens: 15 KV blocks per sequence, two sequences",
    ),
    Scenario(
        "sliding_window",
        "mistral",
        ((PROMPTS[0], PROMPTS[2]),),
        6 * SLIDING_WINDOW,
        engine={"max_prefill_token_num": 16},
        min_calls={"prefill_attention": 1, "paged_prefill_attention": 4, "paged_decode_attention": 40},
        doc=f"sliding window {SLIDING_WINDOW} (a query sees its {SLIDING_WINDOW} most recent keys, as HF): a "
        f"77-token prompt prefilled in chunks of 16 beside an 11-token one, then {6 * SLIDING_WINDOW} new tokens "
        "(the window crossed 6 times while decoding); HF runs with the window on (W+1 keys diverge)",
    ),
)

BY_NAME = {s.name: s for s in SCENARIOS}
