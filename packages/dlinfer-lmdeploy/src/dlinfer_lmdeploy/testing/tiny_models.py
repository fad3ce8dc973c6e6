"""Tiny random-weight models built locally from configs, with a locally built tokenizer.

No hub access: the tokenizer is a character-level ``WordLevel`` model over a fixed
alphabet, and the weights are random (seeded). ``build(kind, path)`` writes a Hugging Face
checkpoint directory that LMDeploy and transformers both load; ``build_<kind>(path, dtype=..., seed=...)`` is
the builder the model table (``model_table.ROWS``) names, and writes the InternLM2 kinds in InternLM2's format
with their Llama oracle under ``path/oracle``.
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
"""small-head (16) models of the scenarios that exercise the engine (prefix caching, chunked prefill, tp=2)"""


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


SLIDING_WINDOW = 8
"""``sliding_window`` of the tiny Mistral: a query sees its 8 most recent keys (HF's and dlinfer's convention)"""

INTERNLM2_5_MAX_POSITIONS = 128
"""``max_position_embeddings`` of the tiny InternLM2.5: the scenarios stay below it, the dynamic-NTK test crosses it"""

_COMMON: dict[str, Any] = dict(
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
_H128 = dict(head_dim=128, intermediate_size=256)

SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    # kind -> (transformers config class, overrides of _COMMON)
    "llama": ("LlamaConfig", {}),
    "qwen2": ("Qwen2Config", {}),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        dict(
            moe_intermediate_size=32,
            shared_expert_intermediate_size=64,
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=False,
            decoder_sparse_step=1,
        ),
    ),
    "mixtral": ("MixtralConfig", dict(num_local_experts=8, num_experts_per_tok=2)),
    # Mistral-7B-v0.1's sliding window on every layer, small enough that decoding crosses it many times
    "mistral": ("MistralConfig", dict(sliding_window=SLIDING_WINDOW)),
    # realistic head sizes and GQA ratios; hidden and MLP widths stay tiny (hidden < heads x head_dim is allowed
    # where LMDeploy's model file reads head_dim from the config)
    "llama3": (  # Llama-3.2-1B/3B attention (head 64, GQA 4), Llama-3.1 rope scaling
        "LlamaConfig",
        dict(
            hidden_size=128,
            intermediate_size=256,
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=64,
            max_position_embeddings=131072,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=8192,
            ),
        ),
    ),
    "mixtral_8x7b": (  # LMDeploy's mixtral.py derives head_dim from hidden_size: hidden = 8 x 128
        "MixtralConfig",
        dict(
            hidden_size=1024,
            intermediate_size=64,
            num_attention_heads=8,
            num_key_value_heads=2,
            num_local_experts=8,
            num_experts_per_tok=2,
            rope_parameters=dict(rope_type="default", rope_theta=1e6),
        ),
    ),
    "qwen2_7b": (  # Qwen2-7B: 28 query / 4 KV heads (GQA 7), head 128, QKV bias
        "Qwen2Config",
        dict(hidden_size=128, num_attention_heads=28, num_key_value_heads=4, **_H128),
    ),
    "qwen2_57b_a14b": (  # Qwen2-57B-A14B: GQA 7, head 128, 64 experts top-8, gated shared expert
        "Qwen2MoeConfig",
        dict(
            hidden_size=128,
            num_attention_heads=28,
            num_key_value_heads=4,
            **_H128,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=128,
            num_experts=64,
            num_experts_per_tok=8,
            norm_topk_prob=False,
            decoder_sparse_step=1,
        ),
    ),
    "qwen3": (  # Qwen3-8B: 32/8 heads (GQA 4), head 128, q/k RMSNorm
        "Qwen3Config",
        dict(hidden_size=128, num_attention_heads=8, num_key_value_heads=2, **_H128),
    ),
    "qwen3_moe": (  # Qwen3-30B-A3B: 32/4 heads (GQA 8), head 128, 128 experts top-8, norm_topk_prob
        "Qwen3MoeConfig",
        dict(
            hidden_size=128,
            num_attention_heads=16,
            num_key_value_heads=2,
            **_H128,
            moe_intermediate_size=16,
            num_experts=128,
            num_experts_per_tok=8,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            mlp_only_layers=[],
        ),
    ),
    "internlm3": (  # InternLM3-8B: 32/2 heads (GQA 16), head 128, dynamic NTK rope (LMDeploy reads qkv_bias, bias)
        "InternLM3Config",
        dict(
            hidden_size=128,
            num_attention_heads=16,
            num_key_value_heads=1,
            **_H128,
            qkv_bias=False,
            bias=False,
            rope_parameters=dict(rope_type="dynamic", factor=6.0, rope_theta=50000000.0),
        ),
    ),
    # InternLM2 layouts (see write_internlm2): the oracle is a Llama, head_dim = hidden / heads
    "internlm2": (  # InternLM2-7B: 32/8 heads (GQA 4), head 128
        "LlamaConfig",
        dict(
            hidden_size=1024,
            intermediate_size=256,
            num_attention_heads=8,
            num_key_value_heads=2,
            rope_parameters=dict(rope_type="default", rope_theta=1e6),
        ),
    ),
    "internlm2_5": (  # InternLM2.5-20B: 48/8 heads (GQA 6), head 128, dynamic NTK rope (factor 2.0)
        "LlamaConfig",
        dict(
            hidden_size=1536,
            intermediate_size=256,
            num_attention_heads=12,
            num_key_value_heads=2,
            max_position_embeddings=INTERNLM2_5_MAX_POSITIONS,
            rope_parameters=dict(rope_type="dynamic", factor=2.0, rope_theta=1e6),
        ),
    ),
}
CHECKPOINT_KEYS: dict[str, dict[str, Any]] = {
    "internlm3": {"architectures": ["InternLM3ForCausalLM"], "qkv_bias": False, "bias": False},
}
"""config.json keys of the real checkpoint that the HF class does not write: transformers maps ``internlm3`` to
``LlamaForCausalLM`` (LMDeploy dispatches on ``architectures[0]``) and LMDeploy's internlm3.py reads
``qkv_bias``/``bias``"""
MOE_KINDS = frozenset(k for k, (_, o) in SHAPES.items() if "num_experts" in o or "num_local_experts" in o)


def _config(kind: str, **overrides: Any) -> Any:
    import transformers as tf

    if kind not in SHAPES:
        raise ValueError(f"unknown tiny model kind {kind!r}; known: {sorted(SHAPES)}")
    cls, shape = SHAPES[kind]
    return getattr(tf, cls)(**{**_COMMON, **shape, **overrides})


def _fill_(model: Any) -> None:
    """The random-weight recipe of every tiny checkpoint (in place, under no_grad)."""
    # Larger-than-default weights: sharp attention and well-separated logits, so that the
    # continuation depends on the whole context (a bug in paging or masking changes the tokens)
    # and greedy decoding has no near-ties. MoE routers get larger weights still: a near-tie between the
    # k-th and (k+1)-th expert flips the expert set under bf16 rounding, a discontinuous change of the
    # output that says nothing about the kernels (seen on the H100: one Mixtral request, 2 of 12 tokens).
    # Matrices are N(0, 0.2) up to fan-in 128 and N(0, 0.2 * sqrt(128 / fan_in)) beyond (the wide rows: head
    # 128 x 28 heads, hidden 1024), so that activations and attention logits keep the small models' scale.
    for name, p in model.named_parameters():
        if "norm" in name and p.dim() == 1:
            p.fill_(1.0)
        elif "embed" in name or "lm_head" in name or name.endswith(".gate.weight"):  # .gate: MoE router
            p.normal_(0.0, 1.0)
        elif p.dim() > 1:
            p.normal_(0.0, 0.2 * min(1.0, (128 / p.shape[-1]) ** 0.5))
        else:
            p.normal_(0.0, 0.02)


def _save(model: Any, path: Path, dtype: torch.dtype) -> None:
    model = model.to(dtype)
    model.config.torch_dtype = str(dtype).split(".")[1]
    model.save_pretrained(str(path), safe_serialization=True)
    build_tokenizer(path)
    gen = path / "generation_config.json"
    if gen.exists():
        data = json.loads(gen.read_text())
        data.update(do_sample=False)
        gen.write_text(json.dumps(data, indent=2))


def build(
    kind: str, path: str | Path, *, seed: int = 0, dtype: torch.dtype = torch.float32, **config_overrides: Any
) -> Path:
    """Write a tiny random ``kind`` model (+ tokenizer) to ``path`` in its Hugging Face format; returns the path.
    The InternLM2 kinds are written in InternLM2's format by :func:`write_internlm2` (their ``build`` here is
    the Llama oracle)."""
    import transformers as tf

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = _config(kind, **config_overrides)
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        _fill_(model)
    _save(model, path, dtype)
    if kind in CHECKPOINT_KEYS:
        cfg = json.loads((path / "config.json").read_text())
        cfg.update(CHECKPOINT_KEYS[kind])
        (path / "config.json").write_text(json.dumps(cfg, indent=2))
    return path


_INTERNLM2_KEYS = (  # HF Llama -> InternLM2 (remote-code format that LMDeploy's internlm2.py loads)
    ("model.embed_tokens.", "model.tok_embeddings."),
    ("lm_head.", "output."),
    (".self_attn.o_proj.", ".attention.wo."),
    (".mlp.gate_proj.", ".feed_forward.w1."),
    (".mlp.up_proj.", ".feed_forward.w3."),
    (".mlp.down_proj.", ".feed_forward.w2."),
    (".input_layernorm.", ".attention_norm."),
    (".post_attention_layernorm.", ".ffn_norm."),
)


def llama_to_internlm2(state: dict[str, torch.Tensor], num_heads: int, num_kv_heads: int) -> dict[str, torch.Tensor]:
    """HF Llama weights -> InternLM2 weights. q/k/v [H*D, hidden] fuse into ``attention.wqkv`` in the 'hgd'
    layout: per KV head, its ``num_heads / num_kv_heads`` query heads, then its key head, then its value head."""
    out: dict[str, torch.Tensor] = {}
    group = num_heads // num_kv_heads
    for name, w in state.items():
        if ".self_attn.k_proj." in name or ".self_attn.v_proj." in name:
            continue
        if ".self_attn.q_proj." in name:
            k, v = state[name.replace("q_proj", "k_proj")], state[name.replace("q_proj", "v_proj")]
            d = k.shape[0] // num_kv_heads
            hidden = w.shape[-1]
            wqkv = torch.cat(
                [w.view(num_kv_heads, group, d, hidden), k.view(num_kv_heads, 1, d, hidden),
                 v.view(num_kv_heads, 1, d, hidden)],
                dim=1,
            ).reshape(-1, hidden)  # fmt: skip
            out[name.replace(".self_attn.q_proj.", ".attention.wqkv.")] = wqkv.contiguous()
            continue
        for hf, ours in _INTERNLM2_KEYS:
            name = name.replace(hf, ours)
        out[name] = w.contiguous()
    return out


def write_internlm2(
    kind: str, path: str | Path, *, seed: int = 0, dtype: torch.dtype = torch.float32, **config_overrides: Any
) -> Path:
    """An InternLM2-format checkpoint at ``path`` (``InternLM2ForCausalLM``, no remote code needed by LMDeploy)
    and its oracle, a HF ``LlamaForCausalLM`` with the same weights, at ``path/oracle``."""
    from safetensors.torch import load_file, save_file

    from dlinfer_lmdeploy.testing.model_table import ORACLE_SUBDIR

    path = Path(path)
    oracle = build(kind, path / ORACLE_SUBDIR, seed=seed, dtype=dtype, **config_overrides)
    llama = json.loads((oracle / "config.json").read_text())
    state = load_file(str(oracle / "model.safetensors"))
    save_file(
        llama_to_internlm2(state, llama["num_attention_heads"], llama["num_key_value_heads"]),
        str(path / "model.safetensors"),
        metadata={"format": "pt"},
    )
    (path / "config.json").write_text(json.dumps(internlm2_config(llama, str(dtype).split(".")[1]), indent=2))
    for extra in ("generation_config.json",):
        if (oracle / extra).exists():
            (path / extra).write_text((oracle / extra).read_text())
    build_tokenizer(path)
    return path


def internlm2_config(llama: dict[str, Any], dtype_name: str) -> dict[str, Any]:
    """The ``config.json`` of an InternLM2-format checkpoint whose weights came from the HF Llama config
    ``llama`` (a ``config.json`` dict) by :func:`llama_to_internlm2`."""
    rope = llama["rope_parameters"]
    return {
        "architectures": ["InternLM2ForCausalLM"],
        "model_type": "internlm2",
        "bias": False,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        # no pad id: LMDeploy zeroes the embedding row of pad_token_id at load, the Llama oracle does not
        # (with 0, any <unk> in a prompt or the output diverged from the oracle)
        "pad_token_id": None,
        "rope_theta": rope["rope_theta"],
        # LMDeploy 0.18 reads rope theta and scaling from ``rope_parameters`` (transformers 5 name) and crashes
        # when the generic config it falls back to lacks it. Real checkpoints spell the scaling ``rope_scaling``
        # (read by their remote-code config class); in the generic config a ``rope_scaling`` key (even null)
        # replaces ``rope_parameters`` and loses rope_theta, so the tiny checkpoint writes only the new key.
        "rope_parameters": rope,
        **{k: llama[k] for k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "bos_token_id", "eos_token_id",
            "tie_word_embeddings",
        )},
        "torch_dtype": dtype_name,
    }  # fmt: skip


def _builder(kind: str) -> Any:
    fmt = write_internlm2 if kind.startswith("internlm2") else build

    def build_kind(path: str | Path, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
        return fmt(kind, path, seed=seed, dtype=dtype)

    build_kind.__name__ = build_kind.__qualname__ = f"build_{kind}"
    build_kind.__doc__ = f"The tiny ``{kind}`` checkpoint (``SHAPES[{kind!r}]``) at ``path``; returns the path."
    return build_kind


# the builders the model table names ("module:function")
build_llama = _builder("llama")
build_qwen2 = _builder("qwen2")
build_qwen2_moe = _builder("qwen2_moe")
build_mixtral = _builder("mixtral")
build_mistral = _builder("mistral")
build_llama3 = _builder("llama3")
build_mixtral_8x7b = _builder("mixtral_8x7b")
build_qwen2_7b = _builder("qwen2_7b")
build_qwen2_57b_a14b = _builder("qwen2_57b_a14b")
build_qwen3 = _builder("qwen3")
build_qwen3_moe = _builder("qwen3_moe")
build_internlm3 = _builder("internlm3")
build_internlm2 = _builder("internlm2")
build_internlm2_5 = _builder("internlm2_5")


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


LLAMA_3_8B_SHAPE: dict[str, Any] = dict(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
    vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192,
)
"""Llama-3-8B's widths, depth, vocabulary and rope base (the GPU benchmarks' ``bench/shapes.py`` uses them too)."""


def llama_3_8b_config(**overrides: Any) -> Any:
    """A Llama-3-8B-shaped config: hidden 4096, 32 layers, 32/8 heads of 128, MLP 14336, vocabulary 128256,
    untied embeddings, rope theta 500000 without scaling (random weights are filled in by the caller)."""
    params: dict[str, Any] = dict(**LLAMA_3_8B_SHAPE, head_dim=128, rope_scaling=None, tie_word_embeddings=False)
    params.update(overrides)
    return llama_3_2_1b_config(**params)


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
