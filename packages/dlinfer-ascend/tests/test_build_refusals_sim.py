"""On the Ascend simulator device, LMDeploy engines for models the plugin's capabilities exclude fail when the
engine is built (``Backend.capabilities``: no logit softcap, head sizes multiples of 16), not at the first request.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import lmdeploy_on_simulator

pytest.importorskip("lmdeploy")
pytest.importorskip("dlinfer_lmdeploy")

from dlinfer_lmdeploy.testing import sim_e2e, tiny_models  # noqa: E402

pytestmark = pytest.mark.skipif(os.environ.get("DLINFER_HARDWARE") == "1", reason="simulator tests")

MODELS = {
    # kind -> (transformers config class, overrides of tiny_models._COMMON, what the refusal names)
    "gemma2_softcap": (
        "Gemma2Config",
        dict(head_dim=16, attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=8,
             query_pre_attn_scalar=16, hidden_activation="gelu_pytorch_tanh"),
        "logit softcap",
    ),
    "llama_head72": ("LlamaConfig", dict(hidden_size=144, num_attention_heads=2, num_key_value_heads=1, head_dim=72),
                     "head size 72 (a multiple of 16 is needed)"),
}


def _build(kind: str, path: Path) -> Path:
    import torch
    import transformers as tf

    cls, overrides, _ = MODELS[kind]
    config = getattr(tf, cls)(**{**tiny_models._COMMON, **overrides})
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        tiny_models._fill_(model)
    tiny_models._save(model, path, torch.bfloat16)
    return path


@pytest.fixture(scope="module")
def ascend_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The checkpoints (built on the host first), then the simulator installed and the device host-simulated."""
    paths = {kind: _build(kind, tmp_path_factory.mktemp(kind)) for kind in MODELS}
    with lmdeploy_on_simulator():
        yield paths


@pytest.mark.parametrize("kind", list(MODELS))
def test_engine_build_refuses_what_the_capabilities_exclude(kind: str, ascend_sim: dict[str, Path]) -> None:
    exc = sim_e2e.build_refusal(ascend_sim[kind], "ascend")
    assert isinstance(exc, NotImplementedError), f"{kind}: expected a refusal at build, got {exc!r}"
    msg = str(exc)
    assert MODELS[kind][2] in msg and "'ascend'" in msg and "dlinfer info" in msg, msg
