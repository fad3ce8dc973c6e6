"""CogVLM pieces that the end-to-end VLM tests (test_vlm_cpu.py, stack B) rely on, checked fast on any stack:
the config-builder patch, CogVLM's position-id rule in the oracle, and the degenerate tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dlinfer_lmdeploy.testing import tiny_cogvlm


@pytest.fixture(scope="module")
def cogvlm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_cogvlm.build_cogvlm2(tmp_path_factory.mktemp("cogvlm2"))


def test_cogvlm_config_builds_for_a_dlinfer_device(cogvlm2: Path) -> None:
    """LMDeploy's CogVLM config builder asks is_bf16_supported() for 'cuda' (torch.cuda.current_device() raises off
    CUDA); patched, it asks for the engine's device and keeps the rest of its work (GQA heads, cogvlm_style)."""
    from lmdeploy.hf_configs import config_from_pretrained
    from lmdeploy.pytorch.config import ModelConfig
    from lmdeploy.pytorch.configurations.cogvlm import CogVLMModelConfigBuilder

    import dlinfer_lmdeploy
    from dlinfer_lmdeploy import inventory

    dlinfer_lmdeploy.install()
    assert "cogvlm-config-bf16" in inventory.applied()
    cfg = ModelConfig.from_hf_config(
        config_from_pretrained(str(cogvlm2)), str(cogvlm2), dtype="auto", device_type="cpu"
    )
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (4, 1, 128)
    assert cfg.cogvlm_style
    from dlinfer_lmdeploy import cpu_device

    # the original's failure, which the patch exists for (not observable once an earlier in-process engine of the
    # session activated the CPU device: its torch.cuda stand-ins answer current_device())
    if not torch.cuda.is_available() and not cpu_device.is_active():
        original = CogVLMModelConfigBuilder.build.__func__.__dlinfer_original__
        with pytest.raises((RuntimeError, AssertionError)):
            original(CogVLMModelConfigBuilder, config_from_pretrained(str(cogvlm2)), str(cogvlm2), device_type="cpu")


@pytest.mark.parametrize(
    ("is_image", "expected"),
    [
        # bos, boi, 3 patches, eoi, 2 text tokens: boi and eoi count as text, the patches share one position
        ([0, 1, 1, 1, 1, 1, 0, 0], [0, 1, 2, 2, 2, 3, 4, 5]),
        # the image first (no bos), as LMDeploy's prompt for the tiny tokenizer has it
        ([1, 1, 1, 1, 0, 0], [0, 1, 1, 2, 3, 4]),
        ([0, 0, 0], [0, 1, 2]),
    ],
)
def test_position_ids_follow_cogvlm_rule(is_image: list[int], expected: list[int]) -> None:
    assert tiny_cogvlm.position_ids(torch.tensor(is_image, dtype=torch.bool)).tolist() == expected


def test_checkpoint_experts_are_degenerate(cogvlm2: Path) -> None:
    """Every vision_expert_* tensor equals its language_expert_* twin (and the vision qkv bias is zero): the
    premise of the Llama oracle; the oracle's q/k/v/o/MLP are those tensors."""
    from safetensors.torch import load_file

    w = load_file(str(cogvlm2 / "model.safetensors"))
    o = load_file(str(cogvlm2 / "oracle" / "model.safetensors"))
    pairs = [k for k in w if "vision_expert" in k or "vision_mlp" in k]
    assert len(pairs) == 2 * 5 + 2  # 2 layers x (qkv, dense, gate, up, down) + 2 qkv biases
    for k in pairs:
        twin = k.replace("vision_expert", "language_expert").replace("vision_mlp", "language_mlp")
        if k.endswith(".bias"):
            assert twin not in w and not w[k].any(), k
        else:
            assert torch.equal(w[k], w[twin]), k
    qkv = w["model.layers.1.self_attn.language_expert_query_key_value.weight"]
    q, k, v = (o[f"model.layers.1.self_attn.{x}_proj.weight"] for x in "qkv")
    assert torch.equal(qkv, torch.cat([q, k, v]))
    assert torch.equal(w["model.layers.1.mlp.language_mlp.down_proj.weight"], o["model.layers.1.mlp.down_proj.weight"])


@pytest.mark.parametrize("shape", [tiny_cogvlm.COGVLM2], ids=["cogvlm2"])
def test_image_features_shape(shape: tiny_cogvlm.Shape, cogvlm2: Path) -> None:
    """boi + the 2x2-downsampled patch grid + eoi, in the LM's width (what LMDeploy reserves per image)."""
    import json

    cfg = json.loads((cogvlm2 / "config.json").read_text())
    pixels = torch.randn(2, 3, shape.image_size, shape.image_size)
    feats = tiny_cogvlm.image_features(tiny_cogvlm.load_vision_weights(cogvlm2), cfg, pixels)
    assert feats.shape == (2, shape.image_tokens, shape.hidden)
    assert not torch.equal(feats[0, 1:-1], feats[1, 1:-1])  # depends on the pixels
    assert torch.equal(feats[0, 0], feats[1, 0]) and torch.equal(feats[0, -1], feats[1, -1])  # learned boi / eoi
