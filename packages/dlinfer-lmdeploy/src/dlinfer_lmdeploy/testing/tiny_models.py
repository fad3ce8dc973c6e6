"""Tiny random-weight models built locally from configs, with a locally built tokenizer.

No hub access: the tokenizer is a character-level ``WordLevel`` model over a fixed
alphabet, and the weights are random (seeded). ``build(kind, path)`` writes a Hugging Face
checkpoint directory that LMDeploy and transformers both load.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import torch

SPECIALS = ["<unk>", "<s>", "</s>"]
ALPHABET = list(string.ascii_letters + string.digits + " .,;:!?'-\n")
VOCAB = SPECIALS + ALPHABET
VOCAB_SIZE = 128  # > len(VOCAB): the tail ids exist in the model but never decode to text

KINDS = ("llama", "qwen2", "qwen2_moe", "mixtral")


def build_tokenizer(path: str | Path, vocab_size: int = VOCAB_SIZE) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    for i in range(len(VOCAB), vocab_size):
        vocab[f"<extra_{i}>"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(str(path))
    return fast


def _config(kind: str, **overrides: Any) -> Any:
    import transformers as tf

    common: dict[str, Any] = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )
    common.update(overrides)
    if kind == "llama":
        return tf.LlamaConfig(**common)
    if kind == "qwen2":
        return tf.Qwen2Config(**common)
    if kind == "qwen2_moe":
        return tf.Qwen2MoeConfig(
            **common,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=64,
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=False,
            decoder_sparse_step=1,
        )
    if kind == "mixtral":
        return tf.MixtralConfig(**common, num_local_experts=8, num_experts_per_tok=2)
    raise ValueError(f"unknown tiny model kind {kind!r}; known: {KINDS}")


def build(
    kind: str, path: str | Path, *, seed: int = 0, dtype: torch.dtype = torch.float32, **config_overrides: Any
) -> Path:
    """Write a tiny random ``kind`` model (+ tokenizer) to ``path``; returns the path."""
    import transformers as tf

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = _config(kind, **config_overrides)
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        # Larger-than-default weights: sharp attention and well-separated logits, so that the
        # continuation depends on the whole context (a bug in paging or masking changes the tokens)
        # and greedy decoding has no near-ties. MoE routers get larger weights still: a near-tie between the
        # k-th and (k+1)-th expert flips the expert set under bf16 rounding, a discontinuous change of the
        # output that says nothing about the kernels (seen on the H100: one Mixtral request, 2 of 12 tokens).
        for name, p in model.named_parameters():
            if "norm" in name and p.dim() == 1:
                p.fill_(1.0)
            elif "embed" in name or "lm_head" in name or name.endswith(".gate.weight"):  # .gate: MoE router
                p.normal_(0.0, 1.0)
            elif p.dim() > 1:
                p.normal_(0.0, 0.2)
            else:
                p.normal_(0.0, 0.02)
    model = model.to(dtype)
    model.config.torch_dtype = str(dtype).split(".")[1]
    model.save_pretrained(str(path), safe_serialization=True)
    build_tokenizer(path)
    gen = path / "generation_config.json"
    if gen.exists():
        data = json.loads(gen.read_text())
        data.update(do_sample=False)
        gen.write_text(json.dumps(data, indent=2))
    return path


def encode(path: str | Path, text: str) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path)).encode(text, add_special_tokens=False)


def llama_3_2_1b_config(**overrides: Any) -> Any:
    """A Llama-3.2-1B-shaped config (random weights are filled in by the caller)."""
    import transformers as tf

    params: dict[str, Any] = dict(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    params.update(overrides)
    return tf.LlamaConfig(**params)


def build_on_device(config: Any, path: str | Path, *, device: str = "cuda", dtype: Any = None, seed: int = 0) -> Path:
    """Random-weight checkpoint of ``config`` initialised on ``device`` (fast for 1B-class models)."""
    import transformers as tf

    path = Path(path)
    if (path / "config.json").exists():
        return path
    dtype = dtype or torch.bfloat16
    torch.manual_seed(seed)
    with torch.device(device):
        model = tf.AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    model.config.torch_dtype = str(dtype).split(".")[1]
    model.save_pretrained(str(path), safe_serialization=True)
    build_tokenizer(path, vocab_size=config.vocab_size)
    return path
