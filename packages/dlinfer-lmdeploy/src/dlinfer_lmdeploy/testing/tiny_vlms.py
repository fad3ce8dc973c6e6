"""Tiny random-weight Qwen-VL checkpoints (Qwen2-VL, Qwen2.5-VL, Qwen3-VL), built locally.

Each builder writes a checkpoint directory that LMDeploy 0.18 and transformers 5 both load: the HF model saved
as is (LMDeploy reads transformers' layout for these families), the char-level tokenizer of
:func:`dlinfer_lmdeploy.testing.tiny_models.build_tokenizer` extended with the family's special tokens and a
chat template, and the family's processor (image processor + video processor; transformers' ``AutoProcessor``
loads the video processor, which needs torchvision).

The images the processors accept are small (4-16 merged image tokens each), so that a request runs in seconds
on a CPU. The weights follow ``tiny_models.build``'s recipe (norms 1, embeddings N(0, 1), matrices N(0, 0.2)):
sharp attention and well separated logits, so that a wrong image feature changes the greedy tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dlinfer_lmdeploy.testing import tiny_models

QWEN_SPECIALS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
"""appended to the char-level vocabulary, in this order (ids ``tiny_models.VOCAB_SIZE`` + i)"""

# ChatML with the Qwen-VL vision markers; renders string content and list content with image items (LMDeploy's
# new-style preprocess, used for Qwen3-VL, renders the raw messages through this template).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'text' %}{{ item['text'] }}"
    "{% elif item['type'] in ('image', 'image_url', 'image_data') %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_family_tokenizer(path: Path, specials: tuple[str, ...], chat_template: str) -> dict[str, int]:
    """The char-level tokenizer of ``tiny_models`` plus ``specials`` (kept whole by ``encode``) and a chat
    template, saved to ``path``; returns token -> id of the specials (ids ``VOCAB_SIZE``, ``VOCAB_SIZE + 1``...)."""
    tok = tiny_models.build_tokenizer(path)
    tok.add_special_tokens({"additional_special_tokens": list(specials)})
    tok.pad_token = "<unk>"  # processors pad (Qwen3-VL's); never inside a single request
    tok.chat_template = chat_template
    tok.save_pretrained(str(path))
    ids = {s: tok.convert_tokens_to_ids(s) for s in specials}
    assert list(ids.values()) == list(range(tiny_models.VOCAB_SIZE, tiny_models.VOCAB_SIZE + len(specials))), ids
    return ids


def vocab_size(specials: tuple[str, ...]) -> int:
    """Model vocabulary: exactly the tokenizer's, so every id the model can emit decodes."""
    return tiny_models.VOCAB_SIZE + len(specials)


def init_weights(model: torch.nn.Module) -> None:
    """``tiny_models.build``'s recipe: norms 1, embeddings / LM head N(0, 1), matrices (and convolutions)
    N(0, 0.2) up to fan-in 128 and N(0, 0.2 * sqrt(128 / fan_in)) beyond, rest N(0, 0.02). The fan-in scaling keeps
    the wide layers' activations at the small ones' scale: with plain N(0, 0.2) the 448-wide Qwen2-VL LLM reached
    logits whose HF bf16 error alone was 1-8 units, too noisy for the GPU's bf16 teacher-forcing check."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and p.dim() == 1:
                p.fill_(1.0)
            elif "embed_tokens" in name or "lm_head" in name:
                p.normal_(0.0, 1.0)
            elif p.dim() > 1:
                p.normal_(0.0, 0.2 * min(1.0, (128 / p[0].numel()) ** 0.5))
            else:
                p.normal_(0.0, 0.02)


def save_model(model: Any, path: Path, dtype: torch.dtype) -> None:
    model = model.to(dtype)
    model.config.dtype = str(dtype).split(".")[1]
    model.save_pretrained(str(path), safe_serialization=True)
    gen = path / "generation_config.json"
    if gen.exists():
        data = json.loads(gen.read_text())
        data.update(do_sample=False)
        gen.write_text(json.dumps(data, indent=2))


def _qwen_token_ids(ids: dict[str, int]) -> dict[str, int]:
    return dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def _text_common(**overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = dict(
        vocab_size=vocab_size(QWEN_SPECIALS),
        intermediate_size=256,
        num_hidden_layers=2,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )
    params.update(overrides)
    return params


def _save_processor(path: Path, processor_cls: Any, video_cls: Any, patch_size: int, merge: int) -> None:
    from transformers import AutoTokenizer, Qwen2VLImageProcessor

    unit = patch_size * merge
    image_processor = Qwen2VLImageProcessor(
        patch_size=patch_size, merge_size=merge, min_pixels=unit * unit * 4, max_pixels=unit * unit * 16
    )
    video = video_cls(patch_size=patch_size, merge_size=merge)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    processor_cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=video).save_pretrained(
        str(path)
    )


def _build(
    path: Path, config: Any, model_cls: Any, processor: tuple[Any, Any, int], dtype: torch.dtype, seed: int
) -> Path:
    torch.manual_seed(seed)
    model = model_cls(config)
    init_weights(model)
    save_model(model, path, dtype)
    processor_cls, video_cls, patch = processor
    _save_processor(path, processor_cls, video_cls, patch, 2)
    return path


def build_qwen2_vl(path: Path, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """Qwen2-VL-7B-shaped in miniature: LLM head size 64 with its 7:1 GQA ratio (7 query heads, 1 KV head),
    QKV bias, mrope (sections 8/12/12); vision tower of 2 LayerNorm + GELU blocks (head size 64) with 2-D vision
    rope, patch 14, 2x2 merge."""
    import transformers as tf

    path.mkdir(parents=True, exist_ok=True)
    ids = build_family_tokenizer(path, QWEN_SPECIALS, QWEN_CHAT_TEMPLATE)
    text = _text_common(
        hidden_size=448,
        num_attention_heads=7,
        num_key_value_heads=1,
        rope_parameters={"rope_type": "default", "mrope_section": [8, 12, 12], "rope_theta": 10000.0},
    )
    # hidden_act "gelu", not the real checkpoints' "quick_gelu": LMDeploy 0.18's qwen2_vl.py VisionMlp computes
    # nn.GELU() for quick_gelu (and gelu_fast, gelu_python), so with quick_gelu LMDeploy differs from HF by
    # design (logits off by 0.1-0.6 on this checkpoint, seen with the teacher-forcing check), whatever the backend.
    vision = dict(depth=2, embed_dim=128, hidden_size=448, num_heads=2, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, hidden_act="gelu")  # fmt: skip
    config = tf.Qwen2VLConfig(text_config=text, vision_config=vision, **_qwen_token_ids(ids))
    config.architectures = ["Qwen2VLForConditionalGeneration"]
    processor = (tf.Qwen2VLProcessor, tf.Qwen2VLVideoProcessor, 14)
    return _build(path, config, tf.Qwen2VLForConditionalGeneration, processor, dtype, seed)


def build_qwen2_5_vl(path: Path, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """Qwen2.5-VL in miniature: LLM head size 64, 4 query / 2 KV heads; vision tower of 4 RMSNorm + SiLU-gated
    MLP blocks, windowed attention (window 56 px = 2x2 merged units) except the full-attention blocks 1 and 3."""
    import transformers as tf

    path.mkdir(parents=True, exist_ok=True)
    ids = build_family_tokenizer(path, QWEN_SPECIALS, QWEN_CHAT_TEMPLATE)
    text = _text_common(
        hidden_size=256,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_parameters={"rope_type": "default", "mrope_section": [8, 12, 12], "rope_theta": 10000.0},
    )
    vision = dict(depth=4, hidden_size=128, intermediate_size=256, num_heads=2, out_hidden_size=256,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                  fullatt_block_indexes=[1, 3])  # fmt: skip
    config = tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **_qwen_token_ids(ids))
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    processor = (tf.Qwen2_5_VLProcessor, tf.Qwen2VLVideoProcessor, 14)
    return _build(path, config, tf.Qwen2_5_VLForConditionalGeneration, processor, dtype, seed)


def build_qwen3_vl(path: Path, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """Qwen3-VL-8B-shaped in miniature: 3 LLM layers of head size 128 with its 4:1 GQA ratio (4 query heads, 1 KV head),
    q/k RMSNorm, interleaved mrope (sections 24/20/20); vision tower of 3 blocks (patch 16, learned position
    embeddings on a 4x4 grid, GELU-tanh) with deepstack features from blocks 0 and 1."""
    import transformers as tf

    path.mkdir(parents=True, exist_ok=True)
    ids = build_family_tokenizer(path, QWEN_SPECIALS, QWEN_CHAT_TEMPLATE)
    text = _text_common(
        hidden_size=256,
        head_dim=128,
        num_hidden_layers=3,  # more LLM layers than deepstack features, as in every real Qwen3-VL (LMDeploy's
        # qwen3_vl.py ends with norm(hidden, residual=None) -> one value, unpacked as two, otherwise)
        num_attention_heads=4,
        num_key_value_heads=1,
        rope_parameters={"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True,
                         "rope_theta": 10000.0},
    )  # fmt: skip
    vision = dict(depth=3, hidden_size=128, intermediate_size=256, num_heads=2, out_hidden_size=256, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
                  deepstack_visual_indexes=[0, 1])  # fmt: skip
    config = tf.Qwen3VLConfig(text_config=text, vision_config=vision, **_qwen_token_ids(ids))
    config.architectures = ["Qwen3VLForConditionalGeneration"]
    processor = (tf.Qwen3VLProcessor, tf.Qwen3VLVideoProcessor, 16)
    return _build(path, config, tf.Qwen3VLForConditionalGeneration, processor, dtype, seed)


def qwen_oracle_inputs(items: list[dict[str, Any]], input_ids: torch.Tensor, config: Any) -> dict[str, Any]:
    """HF Qwen-VL keyword arguments for LMDeploy's captured items: ``pixel_values`` and ``image_grid_thw`` of
    the images in prompt order (Qwen3-VL's grid comes back 1-D), and ``mm_token_type_ids`` (1 at image tokens),
    without which transformers 5 silently skips mrope."""
    extras: dict[str, Any] = {"mm_token_type_ids": (input_ids == config.image_token_id).long()}
    if items:
        extras["pixel_values"] = torch.cat([it["pixel_values"] if "pixel_values" in it else it["feature"]
                                            for it in items])  # fmt: skip
        extras["image_grid_thw"] = torch.cat([torch.as_tensor(it["image_grid_thw"]).view(-1, 3) for it in items])
    return extras


def _vision_calls(config: dict[str, Any]) -> dict[str, int]:
    """The dlinfer op calls of one image's vision tower in LMDeploy's Qwen-VL model files: per block one
    non-causal ``prefill_attention`` (varlen; windowed blocks pass many windows in one call), one in-place vision
    rope, four linears (qkv, proj, two MLP linears); Qwen2.5-VL's RMSNorms (2 per block + the merger's) and gated
    SiLU MLP; Qwen3-VL's patch merger and deepstack mergers (2 linears each)."""
    arch, vision = config["architectures"][0], config["vision_config"]
    depth = vision["depth"]
    calls = {"prefill_attention:noncausal": depth, "prefill_attention": depth, "apply_rotary_pos_emb_inplace": depth,
             "linear": 4 * depth, "prefill_attention:noncausal_seqs": depth}  # fmt: skip
    if arch == "Qwen2_5_VLForConditionalGeneration":
        calls.update(rms_norm=2 * depth + 1, silu_and_mul=depth)
        # windowed blocks attend per window: one sequence per window of the one_image scenario's image
        from dlinfer_lmdeploy.testing import vlm

        (request,) = next(sc for sc in vlm.SCENARIOS if sc.name == "one_image").requests()
        unit = vision["patch_size"] * vision["spatial_merge_size"]  # its size is a multiple of unit: not resized
        w, h = (-(-side // unit) for side in request.images[0].size)
        win = vision["window_size"] // unit
        windows = -(-w // win) * -(-h // win)
        full = len(vision["fullatt_block_indexes"])
        calls["prefill_attention:noncausal_seqs"] = full + (depth - full) * windows
    if arch == "Qwen3VLForConditionalGeneration":
        calls["linear"] += 2 * (1 + len(vision["deepstack_visual_indexes"]))
    return calls


def _register() -> None:
    from dlinfer_lmdeploy.testing import vlm

    for arch in ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration",
                 "Qwen3VLForConditionalGeneration"):  # fmt: skip
        vlm.register_oracle(arch, qwen_oracle_inputs)
        vlm.register_vision_calls(arch, _vision_calls)


_register()
