"""Tiny random-weight CogVLM / CogVLM2 checkpoints and their CPU oracle (the degenerate-expert oracle).

transformers has no CogVLM class, and LMDeploy 0.18 serves the original checkpoint layout
(``CogVLMForCausalLM``, ``lmdeploy/pytorch/models/cogvlm.py``). The builders write that layout, with every
``vision_expert_*`` weight equal to its ``language_expert_*`` twin (and the CogVLM2 vision-expert qkv bias zero).
The language model is then a Llama whatever the routing of tokens to experts, with CogVLM's position ids, so:

* the **LM oracle** is HF ``LlamaForCausalLM`` (weights under ``<path>/oracle/``) driven with ``inputs_embeds``
  and explicit ``position_ids``;
* the **image features** come from :func:`image_features`, a compact EVA2-CLIP + GLU written here from the
  published architecture (patch conv, cls token + learned position embedding, post-norm blocks
  ``x + LN(attn(x))``, ``x + LN(mlp(x))``, cls dropped, CogVLM2's 2x2 stride-2 conv, GLU adapter, learned
  boi/eoi), independent of LMDeploy's code;
* the **position ids** follow CogVLM's rule (:func:`position_ids`): the image span's first and last token count
  as text, every text token advances the position by one, the image's patch tokens all share one position.

What this oracle cannot catch, by construction: which tokens LMDeploy routes to the vision expert (identical
experts make routing invisible). Routing is LMDeploy's code, not dlinfer's; dlinfer owns the ops (linear on the
gathered subsets, rms_norm, rotary, attention), which this oracle does check.

The oracle is fed LMDeploy's exact ``input_ids`` and ``pixel_values`` (captured from its multimodal processor).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dlinfer_lmdeploy.testing import tiny_models
from dlinfer_lmdeploy.testing.model_table import ORACLE_SUBDIR

IMAGE_PAD = "<|cogvlm_image|>"
"""the image placeholder token (``pad_token_id`` in the config, as in the real checkpoints); id ``VOCAB_SIZE``"""
VISION = "model.vision."


@dataclass(frozen=True)
class Shape:
    """Sizes of one tiny checkpoint."""

    hidden: int
    heads: int
    kv_heads: int | None
    """``num_multi_query_heads`` (CogVLM2's GQA); ``None``: MHA without the key (CogVLM)"""
    intermediate: int
    layers: int
    image_size: int
    patch: int
    vision_hidden: int
    vision_heads: int
    vision_intermediate: int
    vision_layers: int

    @property
    def grid(self) -> int:
        return self.image_size // self.patch

    @property
    def cogvlm2(self) -> bool:
        return self.kv_heads is not None

    @property
    def num_positions(self) -> int:
        """cls + patches; LMDeploy takes the CogVLM(1) branch (no downsample conv) iff this is 1226 (35 x 35 + 1)."""
        return self.grid**2 + 1

    @property
    def image_tokens(self) -> int:
        """LM tokens per image: boi + patch features (after CogVLM2's 2x2 conv) + eoi."""
        side = self.grid // 2 if self.cogvlm2 else self.grid
        return side * side + 2


# CogVLM-chat-17B: Vicuna-7B LM (hidden 4096, 32 heads of 128, MHA), EVA2-CLIP-E at 490 px / patch 14. The
# CogVLM(1) branch of LMDeploy is selected by num_positions == 1226, so the tiny one keeps the 35 x 35 patch grid
# (1227 image tokens) and shrinks the widths: head size 128, MHA.
COGVLM = Shape(
    hidden=256, heads=2, kv_heads=None, intermediate=512, layers=2,
    image_size=490, patch=14, vision_hidden=64, vision_heads=4, vision_intermediate=128, vision_layers=2,
)  # fmt: skip
# CogVLM2-Llama3-19B: Llama3-8B LM (32 heads of 128, num_multi_query_heads 8: GQA 4:1), EVA2-CLIP-E at
# 1344 px / patch 14, 2x2 conv downsample. Tiny: head size 128 with the 4:1 ratio, an 8 x 8 grid -> 16 tokens.
COGVLM2 = Shape(
    hidden=512, heads=4, kv_heads=1, intermediate=1024, layers=2,
    image_size=112, patch=14, vision_hidden=64, vision_heads=4, vision_intermediate=128, vision_layers=2,
)  # fmt: skip

ROPE_THETA = 10000.0
"""LMDeploy 0.18's ``cogvlm.py`` builds its rotary table with base 10000 for CogVLM and CogVLM2 alike (the
original CogVLM2 code uses 500000); the tiny checkpoints are checked against what LMDeploy computes."""
LN_EPS = 1e-6  # vision LayerNorm eps of the real configs
GLU_LN_EPS = 1e-5  # the GLU adapter's LayerNorm uses torch's default eps in the original code


def _hf_config(shape: Shape, image_pad_id: int) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "architectures": ["CogVLMForCausalLM"],
        "model_type": "cogvlm",
        "vocab_size": tiny_models.VOCAB_SIZE + 1,
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 2048,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": image_pad_id,
        "tie_word_embeddings": False,
        "template_version": "chat",
        "torch_dtype": "float32",
        "vision_config": {
            "in_channels": 3,
            "hidden_size": shape.vision_hidden,
            "num_heads": shape.vision_heads,
            "intermediate_size": shape.vision_intermediate,
            "num_hidden_layers": shape.vision_layers,
            "patch_size": shape.patch,
            "image_size": shape.image_size,
            "num_positions": shape.num_positions,
            "hidden_act": "gelu",
            "layer_norm_eps": LN_EPS,
            "dropout_prob": 0.0,
        },
    }
    if shape.cogvlm2:
        cfg["num_multi_query_heads"] = shape.kv_heads
    return cfg


def _lm_weights(shape: Shape, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The language model in HF Llama names (the oracle's checkpoint), ``tiny_models``' recipe: norms 1,
    embeddings / LM head N(0, 1), matrices N(0, 0.2)."""
    head_dim = shape.hidden // shape.heads
    kv = (shape.kv_heads or shape.heads) * head_dim
    h, i = shape.hidden, shape.intermediate

    def mat(*size: int, std: float = 0.2) -> torch.Tensor:
        return torch.randn(*size, generator=gen) * std

    w = {"model.embed_tokens.weight": mat(tiny_models.VOCAB_SIZE + 1, h, std=1.0), "model.norm.weight": torch.ones(h)}
    for n in range(shape.layers):
        p = f"model.layers.{n}."
        w.update({
            p + "self_attn.q_proj.weight": mat(h, h), p + "self_attn.k_proj.weight": mat(kv, h),
            p + "self_attn.v_proj.weight": mat(kv, h), p + "self_attn.o_proj.weight": mat(h, h),
            p + "mlp.gate_proj.weight": mat(i, h), p + "mlp.up_proj.weight": mat(i, h),
            p + "mlp.down_proj.weight": mat(h, i),
            p + "input_layernorm.weight": torch.ones(h), p + "post_attention_layernorm.weight": torch.ones(h),
        })  # fmt: skip
    w["lm_head.weight"] = mat(tiny_models.VOCAB_SIZE + 1, h, std=1.0)
    return w


def _to_cogvlm_lm(llama: dict[str, torch.Tensor], shape: Shape) -> dict[str, torch.Tensor]:
    """Llama names -> CogVLM names, each expert pair sharing the Llama weight (the degenerate-expert model)."""
    out = {k: v for k, v in llama.items() if not k.startswith("model.layers.")}
    for n in range(shape.layers):
        p = f"model.layers.{n}."
        qkv = torch.cat([llama[p + f"self_attn.{x}_proj.weight"] for x in "qkv"])  # [q; k; v] rows
        for expert in ("language", "vision"):
            out[p + f"self_attn.{expert}_expert_query_key_value.weight"] = qkv.clone()
            out[p + f"self_attn.{expert}_expert_dense.weight"] = llama[p + "self_attn.o_proj.weight"].clone()
            for x in ("gate", "up", "down"):
                out[p + f"mlp.{expert}_mlp.{x}_proj.weight"] = llama[p + f"mlp.{x}_proj.weight"].clone()
        if shape.cogvlm2:  # CogVLM2's vision expert has a qkv bias; zero keeps the experts identical
            out[p + "self_attn.vision_expert_query_key_value.bias"] = torch.zeros(qkv.shape[0])
        for x in ("input_layernorm", "post_attention_layernorm"):
            out[p + f"{x}.weight"] = llama[p + f"{x}.weight"]
    return out


def _vision_weights(shape: Shape, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """EVA2-CLIP + GLU in the original names. The tower's matrices are N(0, 1/fan_in) (activations of order 1,
    so that bf16 runs stay comparable); the GLU adapter follows the LM recipe (N(0, 0.2)) so that the image
    features are as large as token embeddings and steer the continuation."""
    c, v, vi, h, i = 3, shape.vision_hidden, shape.vision_intermediate, shape.hidden, shape.intermediate

    def mat(*size: int, std: float | None = None) -> torch.Tensor:
        fan_in = math.prod(size[1:])
        return torch.randn(*size, generator=gen) * (std if std is not None else fan_in**-0.5)

    def vec(n: int, std: float = 0.02) -> torch.Tensor:
        return torch.randn(n, generator=gen) * std

    p = VISION
    w = {
        p + "patch_embedding.proj.weight": mat(v, c, shape.patch, shape.patch),
        p + "patch_embedding.proj.bias": vec(v),
        p + "patch_embedding.cls_embedding": mat(1, v, std=1.0),
        p + "patch_embedding.position_embedding.weight": mat(shape.num_positions, v, std=1.0),
    }
    for n in range(shape.vision_layers):
        q = f"{p}transformer.layers.{n}."
        w.update({
            q + "input_layernorm.weight": torch.ones(v), q + "input_layernorm.bias": vec(v),
            q + "attention.query_key_value.weight": mat(3 * v, v), q + "attention.query_key_value.bias": vec(3 * v),
            q + "attention.dense.weight": mat(v, v), q + "attention.dense.bias": vec(v),
            q + "mlp.fc1.weight": mat(vi, v), q + "mlp.fc1.bias": vec(vi),
            q + "mlp.fc2.weight": mat(v, vi), q + "mlp.fc2.bias": vec(v),
            q + "post_attention_layernorm.weight": torch.ones(v), q + "post_attention_layernorm.bias": vec(v),
        })  # fmt: skip
    if shape.cogvlm2:
        w[p + "conv.weight"] = mat(v, v, 2, 2)
        w[p + "conv.bias"] = vec(v)
    w.update({
        p + "linear_proj.linear_proj.weight": mat(h, v, std=0.2),
        p + "linear_proj.norm1.weight": torch.ones(h), p + "linear_proj.norm1.bias": vec(h),
        p + "linear_proj.gate_proj.weight": mat(i, h, std=0.2),
        p + "linear_proj.dense_h_to_4h.weight": mat(i, h, std=0.2),
        p + "linear_proj.dense_4h_to_h.weight": mat(h, i, std=0.2),
        p + "boi": mat(1, 1, h, std=1.0), p + "eoi": mat(1, 1, h, std=1.0),
    })  # fmt: skip
    return w


def _oracle_config(shape: Shape) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=tiny_models.VOCAB_SIZE + 1,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads or shape.heads,
        head_dim=shape.hidden // shape.heads,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )


def _build_tokenizer(path: Path) -> int:
    """``tiny_models``' char-level tokenizer plus the image placeholder; no chat template (LMDeploy picks its
    ``cogvlm`` template from a path containing "cogvlm", and its ``base`` template otherwise)."""
    tok = tiny_models.build_tokenizer(path)
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_PAD]})
    tok.save_pretrained(str(path))
    pad = tok.convert_tokens_to_ids(IMAGE_PAD)
    assert pad == tiny_models.VOCAB_SIZE, pad
    return pad


def _build(path: Path, shape: Shape, dtype: torch.dtype, seed: int) -> Path:
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    pad = _build_tokenizer(path)
    gen = torch.Generator().manual_seed(seed)
    llama = _lm_weights(shape, gen)
    weights = {**_to_cogvlm_lm(llama, shape), **_vision_weights(shape, gen)}
    save_file({k: t.to(dtype).contiguous() for k, t in weights.items()}, str(path / "model.safetensors"))
    cfg = _hf_config(shape, pad)
    cfg["torch_dtype"] = str(dtype).split(".")[1]
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    (path / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "do_sample": False}))

    oracle = path / ORACLE_SUBDIR
    model = LlamaForCausalLM(_oracle_config(shape))
    missing, unexpected = model.load_state_dict(llama, strict=False)
    assert not unexpected and all("rotary_emb" in k for k in missing), (missing, unexpected)
    model = model.to(dtype)  # the weights LMDeploy serves, bit for bit (an fp32 oracle upcasts them exactly)
    model.config.dtype = str(dtype).split(".")[1]
    model.save_pretrained(str(oracle), safe_serialization=True)
    ocfg = json.loads((oracle / "config.json").read_text())  # save_pretrained writes the class name
    ocfg["architectures"] = [ORACLE_ARCHITECTURE]
    (oracle / "config.json").write_text(json.dumps(ocfg, indent=2))
    _build_tokenizer(oracle)
    return path


def build_cogvlm(path: Path, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """CogVLM-chat-shaped (see :data:`COGVLM`). LMDeploy picks its ``cogvlm`` chat template only for a path
    containing "cogvlm" (and not "cogvlm2"): pass such a path."""
    return _build(Path(path), COGVLM, dtype, seed)


def build_cogvlm2(path: Path, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """CogVLM2-shaped (see :data:`COGVLM2`): GQA via ``num_multi_query_heads``, vision-expert qkv bias, 2x2 conv
    downsample."""
    return _build(Path(path), COGVLM2, dtype, seed)


# --------------------------------------------------------------------------------------------------------------
# The oracle


def load_vision_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``model.vision.*`` tensors of the checkpoint at ``path`` (fp32)."""
    from safetensors import safe_open

    with safe_open(str(Path(path) / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k).float() for k in f.keys() if k.startswith(VISION)}  # noqa: SIM118


def image_features(w: dict[str, torch.Tensor], cfg: dict[str, Any], pixel_values: torch.Tensor) -> torch.Tensor:
    """EVA2-CLIP + GLU + boi/eoi: ``pixel_values [N, 3, S, S]`` -> LM-space features ``[N, T, hidden]`` (T = boi
    + patch features + eoi), computed in ``pixel_values``' dtype. Written from the published architecture."""
    vc = cfg["vision_config"]
    g = {k[len(VISION) :]: t.to(device=pixel_values.device, dtype=pixel_values.dtype) for k, t in w.items()}
    heads, eps = vc["num_heads"], vc["layer_norm_eps"]

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, g[name + ".weight"], g.get(name + ".bias"))

    def layer_norm(x: torch.Tensor, name: str, eps: float) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], g[name + ".weight"], g[name + ".bias"], eps)

    pe = "patch_embedding."
    x = F.conv2d(pixel_values, g[pe + "proj.weight"], g[pe + "proj.bias"], stride=vc["patch_size"])
    x = x.flatten(2).transpose(1, 2)  # [N, P, C], patches in row-major order
    x = torch.cat([g[pe + "cls_embedding"].expand(x.shape[0], 1, -1), x], 1) + g[pe + "position_embedding.weight"]
    n, s, c = x.shape
    for i in range(vc["num_hidden_layers"]):
        q = f"transformer.layers.{i}."
        qh, kh, vh = linear(x, q + "attention.query_key_value").view(n, s, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        probs = torch.softmax((qh @ kh.transpose(-1, -2)) / math.sqrt(c // heads), dim=-1)  # non-causal
        attn = linear((probs @ vh).transpose(1, 2).reshape(n, s, c), q + "attention.dense")
        x = x + layer_norm(attn, q + "input_layernorm", eps)  # post-norm: the block's output is normalised
        mlp = linear(F.gelu(linear(x, q + "mlp.fc1")), q + "mlp.fc2")
        x = x + layer_norm(mlp, q + "post_attention_layernorm", eps)
    x = x[:, 1:]  # drop cls
    if "conv.weight" in g:  # CogVLM2: 2x2 stride-2 conv over the patch grid
        side = math.isqrt(x.shape[1])
        grid = x.transpose(1, 2).reshape(n, c, side, side)
        x = F.conv2d(grid, g["conv.weight"], g["conv.bias"], stride=2).flatten(2).transpose(1, 2)
    a = "linear_proj."  # the GLU adapter
    h = F.gelu(layer_norm(linear(x, a + "linear_proj"), a + "norm1", GLU_LN_EPS))
    h = linear(F.silu(linear(h, a + "gate_proj")) * linear(h, a + "dense_h_to_4h"), a + "dense_4h_to_h")
    return torch.cat([g["boi"].expand(n, 1, -1), h, g["eoi"].expand(n, 1, -1)], 1)


def position_ids(is_image: torch.Tensor) -> torch.Tensor:
    """CogVLM's position ids for one sequence: ``is_image [L]`` bool (the image span, boi .. eoi) -> ``[L]``.

    The first and last token of each image span (boi, eoi) count as text; position ``0`` is the first token and
    every later text token advances by one; inside a span, the first patch token advances by one and the other
    patch tokens repeat it. (One image per sequence, as the original model defines it.)"""
    img = is_image.clone()
    prev = torch.cat([img.new_zeros(1), img[:-1]])
    nxt = torch.cat([img[1:], img.new_zeros(1)])
    img &= prev & nxt  # boi / eoi become text
    prev = torch.cat([img.new_zeros(1), img[:-1]])
    step = ~img | (img & ~prev)  # text, or the first patch token
    step[0] = False
    return torch.cumsum(step.long(), 0)


ORACLE_ARCHITECTURE = "CogVLMDegenerateExpertOracle"
"""``architectures[0]`` of ``<path>/oracle/config.json``: an HF Llama checkpoint that is only this family's LM
oracle (it is loaded by :func:`load_oracle`, fed by :func:`oracle_inputs`)."""


class DegenerateExpertOracle(torch.nn.Module):
    """The oracle model: HF ``LlamaForCausalLM`` (``self.lm``) + :func:`image_features` + :func:`position_ids`.

    Called like an HF VLM with the prompt's ``input_ids [1, L]`` (image placeholders included, generated tokens
    may follow) and the images' ``pixel_values [N, 3, S, S]``: ``forward`` returns an object with ``logits
    [1, L, V]``, ``generate`` greedy ids ``[1, L + new]``."""

    def __init__(self, lm: Any, vision: dict[str, torch.Tensor], cfg: dict[str, Any]) -> None:
        super().__init__()
        self.lm, self.vision, self.cfg = lm, vision, cfg
        self.config, self.generation_config = lm.config, lm.generation_config
        self.pad_id = cfg["pad_token_id"]

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        image_spans: Sequence[tuple[int, int]] = (),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``inputs_embeds [1, L, hidden]`` and CogVLM ``position_ids [1, L]`` for ``input_ids [1, L]``; image ``i``
        fills the ``image_spans[i] = (offset, length)`` tokens (placeholders; a generated token may equal the
        placeholder id without being an image)."""
        ids = input_ids[0]
        is_image = torch.zeros_like(ids, dtype=torch.bool)
        for offset, length in image_spans:
            is_image[offset : offset + length] = True
        if not bool((ids[is_image] == self.pad_id).all()):
            raise ValueError(f"image spans {list(image_spans)} are not all placeholder tokens ({self.pad_id})")
        emb = self.lm.get_input_embeddings()(ids).clone()
        if image_spans:
            if pixel_values is None or len(pixel_values) != len(image_spans):
                raise ValueError(f"{len(image_spans)} image spans, pixel_values {getattr(pixel_values, 'shape', None)}")
            feats = image_features(self.vision, self.cfg, pixel_values.to(ids.device, emb.dtype))
            if feats.shape[1] * len(image_spans) != int(is_image.sum()):
                got = f"{int(is_image.sum())} tokens, features {tuple(feats.shape)}"
                raise ValueError(f"image spans {list(image_spans)}: {got}")
            emb[is_image] = feats.flatten(0, 1)
        return emb[None], position_ids(is_image)[None]

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_spans: Sequence[tuple[int, int]] = (),
        **_: Any,
    ) -> Any:
        emb, pos = self.embed(input_ids, pixel_values, image_spans)
        return self.lm(inputs_embeds=emb, position_ids=pos)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_spans: Sequence[tuple[int, int]] = (),
        *,
        max_new_tokens: int,
        suppress_tokens: Sequence[int] | None = None,
        **_: Any,
    ) -> torch.Tensor:
        """Greedy decoding with a KV cache; ``suppress_tokens`` (LMDeploy's ``ignore_eos`` bans EOS) never
        chosen. Other ``generate`` arguments are accepted and ignored (always exactly ``max_new_tokens``)."""
        emb, pos = self.embed(input_ids, pixel_values, image_spans)
        out = self.lm(inputs_embeds=emb, position_ids=pos, use_cache=True)
        tokens: list[int] = []
        nxt = int(pos[0, -1]) + 1
        while True:
            logits = out.logits[0, -1].float()
            if suppress_tokens:
                logits[list(suppress_tokens)] = float("-inf")
            tokens.append(int(logits.argmax()))
            if len(tokens) == max_new_tokens:
                break
            out = self.lm(
                input_ids=torch.tensor([[tokens[-1]]], device=input_ids.device),
                position_ids=torch.tensor([[nxt]], device=input_ids.device),
                cache=out.cache,  # transformers 5: ``cache`` (``past_key_values`` is deprecated)
                use_cache=True,
            )
            nxt += 1
        return torch.cat([input_ids, torch.tensor([tokens], device=input_ids.device)], 1)


def load_oracle(oracle_dir: Path, dtype: torch.dtype) -> DegenerateExpertOracle:
    """The oracle of the tiny checkpoint whose ``oracle/`` directory is ``oracle_dir``."""
    from transformers import LlamaForCausalLM

    oracle_dir = Path(oracle_dir)
    cfg = json.loads((oracle_dir.parent / "config.json").read_text())
    lm = LlamaForCausalLM.from_pretrained(str(oracle_dir), dtype=dtype)
    return DegenerateExpertOracle(lm, load_vision_weights(oracle_dir.parent), cfg)


def oracle_inputs(items: list[dict[str, Any]], input_ids: torch.Tensor, config: Any) -> dict[str, Any]:
    """LMDeploy's captured items (one ``pixel_values [3, S, S]`` each, prompt order) -> ``pixel_values
    [N, 3, S, S]`` and the ``image_spans`` ``(offset, image_tokens)`` LMDeploy filled with placeholders."""
    if not items:
        return {}
    return {
        "pixel_values": torch.stack([it["pixel_values"] for it in items]),
        "image_spans": [(int(it["offset"]), int(it["image_tokens"])) for it in items],
    }


def vision_calls(cfg: dict[str, Any]) -> dict[str, int]:
    """``dlinfer.ops`` calls one image adds to a request (``vlm.register_vision_calls``): the EVA2-CLIP blocks' qkv,
    dense, fc1, fc2 go through dlinfer ``linear`` (4 per block; attention is plain SDPA, LayerNorm/GELU and the GLU
    adapter plain torch), and in the prefill every LM layer runs each expert pair on its token subset (4 more
    ``linear`` calls per layer: vision qkv, dense, gate_up, down)."""
    return {
        "linear": 4 * cfg["vision_config"]["num_hidden_layers"] + 4 * cfg["num_hidden_layers"],
        "prefill_attention:noncausal": 0,
        "rms_norm": 0,
    }


def _register() -> None:
    from dlinfer_lmdeploy.testing import vlm

    vlm.register_oracle(ORACLE_ARCHITECTURE, oracle_inputs, load_oracle)
    vlm.register_vision_calls("CogVLMForCausalLM", vision_calls)


_register()
