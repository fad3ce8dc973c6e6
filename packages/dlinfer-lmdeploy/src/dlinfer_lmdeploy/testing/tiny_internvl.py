"""Tiny random-weight InternVL checkpoints (model-table rows), each with a Hugging Face oracle.

Every builder first makes an HF-native ``InternVLForConditionalGeneration`` (random weights, seeded) — the oracle.

* ``build_internvl2`` / ``build_internvl1_5``: LMDeploy serves the *chat format* (``InternVLChatModel``: InternViT
  under ``vision_model.``, projector ``mlp1``, an InternLM2 LLM with the fused ``wqkv`` 'hgd' layout). The HF model
  (Llama text) is saved under ``<path>/oracle/`` and its weights are converted to the chat layout at ``<path>``.
  The chat format has no transformers class: the checkpoint ships a short ``AutoConfig`` class written here
  (:data:`_CHAT_CONFIG_PY`, not OpenGVLab's code), so LMDeploy must be opened with ``trust_remote_code=True``.
* ``build_internvl3_5_hf``: the HF format itself (Qwen3 LLM with q/k-norm), which LMDeploy serves as saved; the
  oracle is the same directory.

Image placeholder: ``<IMG_CONTEXT>`` (``IMAGE_TOKEN``); 56x56 tiles of 14x14 patches, pixel-shuffled by 0.5, give
:data:`TOKENS_PER_TILE` = 4 LLM tokens per tile.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from . import tiny_models

IMAGE_TOKEN = "<IMG_CONTEXT>"
IMAGE_SIZE = 56
PATCH_SIZE = 14
TOKENS_PER_TILE = (IMAGE_SIZE // PATCH_SIZE) ** 2 // 4
_NAMED_SPECIALS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": IMAGE_TOKEN,
    "video_token": "<video>",
}
# Renders string content and list content ({"type": "image"} items become InternVL's placeholder).
_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'text' %}{{ c['text'] }}{% else %}<img>" + IMAGE_TOKEN + "</img>\n{% endif %}"
    "{% endfor %}{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)

_CHAT_CONFIG_MODULE = "configuration_tiny_internvl_chat"
_CHAT_CONFIG_PY = '''"""AutoConfig of a tiny InternVL chat-format checkpoint (dlinfer's test code, not OpenGVLab's)."""
from transformers import PretrainedConfig


class TinyInternVLChatConfig(PretrainedConfig):
    model_type = "internvl_chat"

    def __init__(self, vision_config=None, llm_config=None, **kwargs):
        super().__init__(**kwargs)
        as_config = lambda c: c if isinstance(c, PretrainedConfig) else PretrainedConfig(**(c or {}))  # noqa: E731
        self.vision_config = as_config(vision_config)
        self.llm_config = as_config(llm_config)

    def to_dict(self):
        out = super().to_dict()
        out["vision_config"] = self.vision_config.to_dict()
        out["llm_config"] = self.llm_config.to_dict()
        return out
'''


def build_tokenizer(path: str | Path) -> Any:
    """The char-level tokenizer of :mod:`tiny_models` with InternVL's image tokens appended as special tokens (ids
    ``VOCAB_SIZE-4 .. VOCAB_SIZE-1``, so the vocabulary stays ``VOCAB_SIZE``) and a chat template."""
    from transformers import AutoTokenizer

    tiny_models.build_tokenizer(path, vocab_size=tiny_models.VOCAB_SIZE - len(_NAMED_SPECIALS))
    tok = AutoTokenizer.from_pretrained(str(path), extra_special_tokens=_NAMED_SPECIALS)
    tok.add_special_tokens({"additional_special_tokens": list(_NAMED_SPECIALS.values())})
    assert len(tok) == tiny_models.VOCAB_SIZE, len(tok)
    tok.chat_template = _CHAT_TEMPLATE
    tok.save_pretrained(str(path))
    return tok


def image_token_id() -> int:
    """Id of ``<IMG_CONTEXT>`` in :func:`build_tokenizer`'s vocabulary."""
    return tiny_models.VOCAB_SIZE - len(_NAMED_SPECIALS) + list(_NAMED_SPECIALS.values()).index(IMAGE_TOKEN)


def _vision_config(*, layer_norm: bool, qkv_bias: bool, qk_norm: bool) -> Any:
    import transformers as tf

    return tf.InternVLVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        attention_bias=qkv_bias,
        use_qk_norm=qk_norm,
        norm_type="layer_norm" if layer_norm else "rms_norm",
        layer_norm_eps=1e-6,  # HF's q/k RMSNorm has a fixed eps 1e-6; LMDeploy uses layer_norm_eps for it
        hidden_act="gelu",
        use_mean_pooling=True,  # no final LayerNorm (InternViT has none)
    )


def _hf_model(vision: Any, text: Any, seed: int) -> Any:
    """A random ``InternVLForConditionalGeneration`` with decisive weights (cf. ``tiny_models.build``)."""
    import transformers as tf

    config = tf.InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id(),
        image_seq_length=TOKENS_PER_TILE,
        downsample_ratio=0.5,
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = tf.InternVLForConditionalGeneration(config).to(torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lambda_" in name:  # layer scale: around 1, so the vision blocks matter
                p.normal_(1.0, 0.1)
            elif ("norm" in name) and p.dim() == 1:
                p.fill_(1.0) if name.endswith("weight") else p.normal_(0.0, 0.02)
            elif "embed_tokens" in name or "lm_head" in name:
                p.normal_(0.0, 1.0)
            elif p.dim() > 1:  # as tiny_models: N(0, 0.2) up to fan-in 128, narrower beyond (same activation scale)
                p.normal_(0.0, 0.2 * min(1.0, (128 / p[0].numel()) ** 0.5))
            else:
                p.normal_(0.0, 0.02)
        pad = text.pad_token_id
        if pad is not None:  # LMDeploy zeroes the embedding row of pad_token_id when it loads the weights
            model.get_input_embeddings().weight[pad] = 0.0
    return model.eval()


def _save_hf(model: Any, path: Path, dtype: torch.dtype) -> None:
    model = model.to(dtype)
    model.config.torch_dtype = str(dtype).split(".")[1]
    model.save_pretrained(str(path), safe_serialization=True)
    build_tokenizer(path)


def _chat_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """HF ``InternVLForConditionalGeneration`` weights -> the chat-format (``InternVLChatModel``) layout."""
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    text = model.config.text_config
    out: dict[str, torch.Tensor] = {}
    llm = {k[len("model.language_model.") :]: v for k, v in sd.items() if k.startswith("model.language_model.")}
    llm = {f"model.{k}": v for k, v in llm.items()}
    llm["lm_head.weight"] = sd["lm_head.weight"]
    for k, v in tiny_models.llama_to_internlm2(llm, text.num_attention_heads, text.num_key_value_heads).items():
        out[f"language_model.{k}"] = v
    vis = "model.vision_tower."
    out["vision_model.embeddings.class_embedding"] = sd[vis + "embeddings.cls_token"]
    out["vision_model.embeddings.position_embedding"] = sd[vis + "embeddings.position_embeddings"]
    for t in ("weight", "bias"):
        out[f"vision_model.embeddings.patch_embedding.{t}"] = sd[vis + f"embeddings.patch_embeddings.projection.{t}"]
    layer_renames = {
        "attention.projection_layer.": "attn.proj.",
        "attention.q_norm.": "attn.q_norm.",
        "attention.k_norm.": "attn.k_norm.",
        "lambda_1": "ls1",
        "lambda_2": "ls2",
        "layernorm_before.": "norm1.",
        "layernorm_after.": "norm2.",
        "mlp.": "mlp.",
    }
    for i in range(model.config.vision_config.num_hidden_layers):
        src, dst = f"{vis}encoder.layer.{i}.", f"vision_model.encoder.layers.{i}."
        for t in ("weight", "bias"):
            parts = [sd.get(f"{src}attention.{x}_proj.{t}") for x in "qkv"]
            if parts[0] is not None:
                out[f"{dst}attn.qkv.{t}"] = torch.cat(parts, dim=0)
        for k, v in sd.items():
            if not k.startswith(src) or any(f".attention.{x}_proj." in k for x in "qkv"):
                continue
            rest = k[len(src) :]
            for old, new in layer_renames.items():
                if rest.startswith(old):
                    out[dst + new + rest[len(old) :]] = v
                    break
            else:
                raise KeyError(f"chat-format conversion: no rule for {k}")
    proj = "model.multi_modal_projector."
    for src, dst in (("layer_norm", "mlp1.0"), ("linear_1", "mlp1.1"), ("linear_2", "mlp1.3")):
        for t in ("weight", "bias"):
            out[f"{dst}.{t}"] = sd[f"{proj}{src}.{t}"]
    return out


def _build_chat(
    path: Path, *, dtype: torch.dtype, seed: int, vision: Any, text: dict[str, Any], dynamic: dict[str, Any]
) -> Path:
    import transformers as tf
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    llama = tf.LlamaConfig(**_text_common(text), pad_token_id=0, architectures=["LlamaForCausalLM"])
    model = _hf_model(vision, llama, seed)
    _save_hf(model, path / "oracle", dtype)

    weights = {k: v.to(dtype).contiguous() for k, v in _chat_state_dict(model).items()}
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    llm_config = dict(
        architectures=["InternLM2ForCausalLM"],
        model_type="internlm2",
        bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": llama.rope_parameters["rope_theta"]},
        rope_theta=llama.rope_parameters["rope_theta"],
        pad_token_id=0,
        torch_dtype=str(dtype).split(".")[1],
        **{k: v for k, v in _text_common(text).items() if k != "head_dim"},
    )
    v = vision
    vision_config = dict(
        architectures=["InternVisionModel"],
        hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size,
        num_hidden_layers=v.num_hidden_layers,
        num_attention_heads=v.num_attention_heads,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        num_channels=3,
        qkv_bias=v.attention_bias,
        qk_normalization=v.use_qk_norm,
        norm_type=v.norm_type,
        hidden_act=v.hidden_act,
        layer_norm_eps=v.layer_norm_eps,
        torch_dtype=str(dtype).split(".")[1],
    )
    config = dict(
        architectures=["InternVLChatModel"],
        model_type="internvl_chat",
        auto_map={"AutoConfig": f"{_CHAT_CONFIG_MODULE}.TinyInternVLChatConfig"},
        select_layer=-1,
        downsample_ratio=0.5,
        template="internlm2-chat",
        ps_version="v2",
        force_image_size=IMAGE_SIZE,
        pad_token_id=0,
        torch_dtype=str(dtype).split(".")[1],
        vision_config=vision_config,
        llm_config=llm_config,
        **dynamic,
    )
    build_tokenizer(path)  # before config.json: its auto_map would make AutoTokenizer ask to trust remote code
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / f"{_CHAT_CONFIG_MODULE}.py").write_text(_CHAT_CONFIG_PY)
    if not dynamic["dynamic_image_size"]:
        # LMDeploy then preprocesses with this CLIP image processor (one tile; the PIL backend where torchvision
        # is missing) instead of its torchvision tiling
        tf.CLIPImageProcessor(
            size={"shortest_edge": IMAGE_SIZE},
            crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
        ).save_pretrained(str(path))
    return path


def _text_common(text: dict[str, Any]) -> dict[str, Any]:
    """LLM config keys shared by the rows (vocabulary and ids of :mod:`tiny_models`), updated with ``text``."""
    common: dict[str, Any] = dict(
        vocab_size=tiny_models.VOCAB_SIZE,
        num_hidden_layers=2,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )
    common.update(text)
    return common


def build_internvl2(path: str | Path, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """InternVL2-2B style chat format: InternViT (LayerNorm, qkv bias) + InternLM2 (head size 64, GQA 16/8 -> 4/2),
    dynamic tiling (up to 4 tiles of 56x56 plus a thumbnail)."""
    return _build_chat(
        Path(path),
        dtype=dtype,
        seed=seed,
        vision=_vision_config(layer_norm=True, qkv_bias=True, qk_norm=False),
        text=dict(hidden_size=256, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2),
        dynamic=dict(dynamic_image_size=True, use_thumbnail=True, min_dynamic_patch=1, max_dynamic_patch=4),
    )


def build_internvl2_single_tile(path: str | Path, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """:func:`build_internvl2` without dynamic tiling: a saved ``CLIPImageProcessor`` makes LMDeploy take its
    one-tile CLIP preprocessing, which runs without torchvision (PIL backend)."""
    return _build_chat(
        Path(path),
        dtype=dtype,
        seed=seed,
        vision=_vision_config(layer_norm=True, qkv_bias=True, qk_norm=False),
        text=dict(hidden_size=256, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2),
        dynamic=dict(dynamic_image_size=False, use_thumbnail=False, min_dynamic_patch=1, max_dynamic_patch=1),
    )


def build_internvl1_5(path: str | Path, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """InternVL-Chat-V1-5 style chat format: InternViT-6B-like vision (RMSNorm, q/k-norm, no qkv bias) + InternLM2
    with InternLM2-20B's GQA ratio 6 (48/8 -> 6/1, head size 64), dynamic tiling."""
    return _build_chat(
        Path(path),
        dtype=dtype,
        seed=seed + 1,
        vision=_vision_config(layer_norm=False, qkv_bias=False, qk_norm=True),
        text=dict(hidden_size=384, intermediate_size=512, num_attention_heads=6, num_key_value_heads=1),
        dynamic=dict(dynamic_image_size=True, use_thumbnail=True, min_dynamic_patch=1, max_dynamic_patch=3),
    )


def build_internvl3_5_hf(path: str | Path, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """InternVL3.5 in HF format (``InternVLForConditionalGeneration``): InternViT-300M-like vision + Qwen3 LLM with
    q/k-norm, head size 128 and Qwen3-8B's GQA ratio 4 (32/8 -> 4/1); GotOcr2 tiling (up to 4 tiles + thumbnail)."""
    import transformers as tf

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    text = tf.Qwen3Config(
        **_text_common(
            dict(hidden_size=256, intermediate_size=384, num_attention_heads=4, num_key_value_heads=1, head_dim=128)
        ),
        architectures=["Qwen3ForCausalLM"],
    )
    model = _hf_model(_vision_config(layer_norm=True, qkv_bias=True, qk_norm=False), text, seed + 2)
    _save_hf(model, path, dtype)
    tok = tf.AutoTokenizer.from_pretrained(str(path))
    image_processor = tf.GotOcr2ImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, crop_to_patches=True, min_patches=1, max_patches=4
    )
    processor = tf.InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=tf.InternVLVideoProcessor(),
        image_seq_length=TOKENS_PER_TILE,
        chat_template=_CHAT_TEMPLATE,
    )
    processor.save_pretrained(str(path))
    return path


def _vision_calls(config: dict[str, Any]) -> dict[str, int]:
    """The dlinfer op calls of one image's vision tower (all its tiles in one batch) in LMDeploy's InternVL model
    files: four linears per block (qkv, proj, fc1, fc2); RMSNorm towers (InternVL-1.5) two ``rms_norm`` per block
    plus two for q/k-norm; attention is plain ``F.scaled_dot_product_attention`` (no ``prefill_attention``).
    The chat format's projector ``mlp1`` is plain ``nn.Linear``; the HF format's projector uses two dlinfer
    linears."""
    vision = config["vision_config"]
    chat = config["architectures"][0] == "InternVLChatModel"
    blocks = vision["num_hidden_layers"]
    qk_norm = vision["qk_normalization"] if chat else vision["use_qk_norm"]
    rms = 2 * blocks * (vision["norm_type"] == "rms_norm") + 2 * blocks * bool(qk_norm)
    return {
        "linear": 4 * blocks + (0 if chat else 2),
        "rms_norm": rms,
        "prefill_attention": 0,
        "prefill_attention:noncausal": 0,
    }


def _register() -> None:
    from dlinfer_lmdeploy.testing import vlm

    for arch in ("InternVLChatModel", "InternVLForConditionalGeneration"):
        vlm.register_vision_calls(arch, _vision_calls)
    # the oracle (HF InternVLForConditionalGeneration) takes the items' pixel_values concatenated in prompt order:
    # vlm.default_oracle_inputs, no hook needed


_register()
