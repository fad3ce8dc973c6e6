"""Full-width random-weight model shapes for the GPU benchmarks (no downloads: built on the device).

InternLM2.5-7B has Llama-3-8B's widths (hidden 4096, 32 layers, 32/8 heads, intermediate 14336) with a 92544-token
vocabulary. ``internlm2_5_7b`` writes it in InternLM2's own format (fused ``wqkv``, ``InternLM2ForCausalLM``), so
that LMDeploy runs its InternLM2 model class, not its Llama one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dlinfer_lmdeploy.testing.tiny_models import LLAMA_3_8B_SHAPE

SHAPES: dict[str, tuple[str, dict[str, Any], int]] = {
    # name: (transformers config class, full-width config, real layer count)
    "llama3_8b": ("LlamaConfig", {k: v for k, v in LLAMA_3_8B_SHAPE.items() if k != "num_hidden_layers"}, 32),
    "qwen2_7b": ("Qwen2Config", dict(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4,
        rope_theta=1e6, max_position_embeddings=32768), 28),
    "mixtral_8x7b": ("MixtralConfig", dict(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
        num_local_experts=8, num_experts_per_tok=2, rope_theta=1e6, max_position_embeddings=32768), 32),
    "qwen2_57b_a14b": ("Qwen2MoeConfig", dict(
        vocab_size=151936, hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4,
        num_experts=64, num_experts_per_tok=8, moe_intermediate_size=2560, shared_expert_intermediate_size=20480,
        norm_topk_prob=False, rope_theta=1e6, max_position_embeddings=32768), 28),
    "internlm2_5_7b": ("LlamaConfig", dict(  # written in InternLM2's format (INTERNLM2_FORMAT)
        vocab_size=92544, hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
        rope_theta=1e6, max_position_embeddings=32768), 32),
    "llama3_70b": ("LlamaConfig", dict(
        vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_attention_heads=64, num_key_value_heads=8,
        rope_theta=500000.0, max_position_embeddings=8192), 80),
}
INTERNLM2_FORMAT = frozenset({"internlm2_5_7b"})
"""Shapes built as a Llama and written in InternLM2's checkpoint format (``tiny_models.llama_to_internlm2``)."""
TINY = dict(hidden_size=128, intermediate_size=64, moe_intermediate_size=32, shared_expert_intermediate_size=64,
            vocab_size=512)  # --dry-run: the same heads and experts, tiny widths (head 128 -> hidden / heads)
def model_config(name: str, layers: int, tiny: bool = False) -> Any:
    import transformers as tf

    cls, params, _ = SHAPES[name]
    params = {**params, "num_hidden_layers": layers, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2}
    if tiny:
        heads = params["num_attention_heads"]
        params.update({k: v for k, v in TINY.items() if k in params or k == "hidden_size"})
        params["hidden_size"] = heads * 4  # head size 4: widths tiny, heads and experts as the real model
    return getattr(tf, cls)(**params)


def build(name: str, layers: int, root: Path, device: str, tiny: bool = False) -> Path:
    import torch

    from dlinfer_lmdeploy.testing import tiny_models

    path = root / f"{name}-{layers}l{'-tiny' if tiny else ''}"
    if name in INTERNLM2_FORMAT:
        _build_internlm2(model_config(name, layers, tiny), path, device)
    else:
        tiny_models.build_on_device(model_config(name, layers, tiny), path, device=device, dtype=torch.bfloat16)
    if device == "cuda":
        torch.cuda.empty_cache()
    return path


def _build_internlm2(config: Any, path: Path, device: str) -> None:
    """Random bf16 Llama weights of ``config`` made on ``device``, saved in InternLM2's format (one safetensors
    file, fused ``wqkv``) with its config and a tokenizer."""
    import json

    import torch
    import transformers as tf
    from safetensors.torch import save_file

    from dlinfer_lmdeploy.testing import tiny_models

    if (path / "config.json").exists():
        return
    torch.manual_seed(0)
    with torch.device(device):
        model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            p.fill_(1.0) if "norm" in pname and p.dim() == 1 else p.normal_(0.0, 0.02)
    state = tiny_models.llama_to_internlm2(model.state_dict(), config.num_attention_heads, config.num_key_value_heads)
    del model
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(tiny_models.internlm2_config(config.to_dict(), "bfloat16"),
                                                 indent=2))
    tiny_models.build_tokenizer(path, vocab_size=config.vocab_size)
