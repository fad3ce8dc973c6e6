"""The model table: one row per model family dlinfer promises to serve through LMDeploy.

Each row names the real checkpoints it stands for, the LMDeploy architecture that serves them, the tiny
random-weight checkpoint that stands in for them in tests (``kind``, built locally by ``builder``) and the
oracle it is checked against. The CPU tests, the GPU tests, the vendor-simulator tests and the README's
supported-model table are all derived from this table (``python -m dlinfer_lmdeploy.testing.model_table``
prints the README table).

Conventions shared by every builder:

* ``build(path, *, dtype=torch.float32, seed=0) -> Path`` writes a checkpoint directory that LMDeploy loads
  (tokenizer included, no downloads);
* when LMDeploy's checkpoint format has no Hugging Face class (InternLM2, InternVL chat format, CogVLM), the
  builder also writes the HF-native equivalent with the same weights under ``<path>/oracle/``;
  :func:`oracle_path` returns the directory an oracle loads.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ORACLE_SUBDIR = "oracle"


@dataclass(frozen=True)
class ModelRow:
    family: str
    """the family as users name it, e.g. ``"InternLM2.5"``"""
    checkpoints: str
    """the real checkpoints this row stands for, e.g. ``"InternLM2.5-7B/20B"``"""
    architecture: str
    """the ``architectures[0]`` LMDeploy dispatches on, e.g. ``"InternLM2ForCausalLM"``"""
    modality: Literal["LLM", "VLM"]
    kind: str
    """key of the tiny checkpoint (unique); scenarios refer to it"""
    builder: str
    """``"module:function"`` building the tiny checkpoint (see the module docstring)"""
    shape: str
    """what the tiny checkpoint keeps of the real one (head size, GQA ratio, experts, vision tower)"""
    oracle: str
    """what the tokens are compared with"""
    needs_torchvision: bool = False
    """its preprocessing (LMDeploy's or HF's) imports torchvision: tested in the ``tests-vlm`` session"""
    refused: dict[str, str] = field(default_factory=dict)
    """device -> why the engine refuses this row there at build (never a silent fallback)"""
    engine: dict[str, Any] = field(default_factory=dict)
    """``PytorchEngineConfig`` overrides its checkpoint needs on every device (e.g. ``session_len`` for long image
    prompts), applied on top of the tests' engine configuration"""
    skipped: dict[str, str] = field(default_factory=dict)
    """scenario name -> why this row does not run it (the tests report a skip with this reason, never silently)"""
    note: str = ""

    def build(self, path: str | Path, **kwargs: object) -> Path:
        module, _, fn = self.builder.partition(":")
        func: Callable[..., Path] = getattr(importlib.import_module(module), fn)
        return func(Path(path), **kwargs)


def oracle_path(path: str | Path) -> Path:
    """The checkpoint an HF oracle loads for the tiny checkpoint at ``path``."""
    path = Path(path)
    return path / ORACLE_SUBDIR if (path / ORACLE_SUBDIR / "config.json").exists() else path


_TEXT = "dlinfer_lmdeploy.testing.tiny_models"
_COGVLM_ORACLE = (
    "degenerate-expert oracle: HF LlamaForCausalLM (oracle/) with inputs_embeds + CogVLM position ids, image features "
    "from an EVA2-CLIP + GLU reference (tiny_cogvlm); it cannot catch which tokens LMDeploy routes to the vision "
    "expert (identical experts), which is LMDeploy's model code, not dlinfer's (LMDeploy sends the whole image span "
    "to the vision expert, the original model its last token, eoi, to the language expert)"
)
_COGVLM_TWO_IMAGES = (
    "CogVLM takes one image per conversation (the original build_position_ids treats adjacent images as one span). "
    "LMDeploy 0.18 accepts several, but from the second image on its prefill position ids are off by one (that "
    "image's boi gets the patch position, its last patch a position of its own) and its decode positions continue "
    "from another offset; with exactly LMDeploy's positions the degenerate oracle matched dlinfer token for token "
    "(checked by hand), so this is LMDeploy's position logic, not an op question"
)

ROWS: tuple[ModelRow, ...] = (
    # --- LLM rows (tiny_models) ---
    # realistic attention shapes (head 64/128, the real GQA ratios, the real MoE routing); 2 layers, narrow
    # hidden/MLP widths. Oracle: HF transformers greedy generate in fp32, one request at a time.
    ModelRow(
        "Llama3", "Llama3-8B, Llama3.1, Llama3.2-1B/3B", "LlamaForCausalLM", "LLM", "llama3",
        f"{_TEXT}:build_llama3",
        "8/2 heads (GQA 4), head 64 (Llama-3.2's; 8B: 128), hidden 128, llama3 rope scaling (factor 8, "
        "theta 5e5, original 8192)",
        "HF LlamaForCausalLM",
    ),
    ModelRow(
        "Mixtral", "Mixtral-8x7B", "MixtralForCausalLM", "LLM", "mixtral_8x7b", f"{_TEXT}:build_mixtral_8x7b",
        "8/2 heads (GQA 4), head 128 (hidden 1024: mixtral.py derives head size from it), 8 experts top-2",
        "HF MixtralForCausalLM",
    ),
    ModelRow(
        "Qwen2", "Qwen2-7B, Qwen2.5", "Qwen2ForCausalLM", "LLM", "qwen2_7b", f"{_TEXT}:build_qwen2_7b",
        "28/4 heads (GQA 7), head 128, QKV bias, hidden 128",
        "HF Qwen2ForCausalLM",
    ),
    ModelRow(
        "Qwen2-MoE", "Qwen2-57B-A14B, Qwen1.5-MoE", "Qwen2MoeForCausalLM", "LLM", "qwen2_57b_a14b",
        f"{_TEXT}:build_qwen2_57b_a14b",
        "28/4 heads (GQA 7), head 128, 64 experts top-8 (no renormalisation), sigmoid-gated shared expert",
        "HF Qwen2MoeForCausalLM",
    ),
    ModelRow(
        "InternLM2", "InternLM2-7B/20B", "InternLM2ForCausalLM", "LLM", "internlm2", f"{_TEXT}:build_internlm2",
        "8/2 heads (GQA 4), head 128 (hidden 1024), fused wqkv ('hgd' layout), remote-code checkpoint format",
        "HF LlamaForCausalLM with the same weights (oracle/)",
    ),
    ModelRow(
        "InternLM2.5", "InternLM2.5-7B/20B", "InternLM2ForCausalLM", "LLM", "internlm2_5",
        f"{_TEXT}:build_internlm2_5",
        "12/2 heads (GQA 6, 20B's), head 128 (hidden 1536), dynamic NTK rope (factor 2, max positions 128)",
        "HF LlamaForCausalLM (rope_type dynamic) with the same weights (oracle/)",
        note="the shared scenarios stay below max_position_embeddings (the GPU checker's teacher forcing ropes a "
        "whole sequence at its final length). Past it (tests/test_e2e_cpu.py::test_dynamic_ntk_past_max_positions): "
        "a request alone matches HF greedy; in a batch LMDeploy scales every sequence's rotary base by the step's "
        "longest sequence, as HF's batched generate does, so a request's tokens depend on what it is batched with",
    ),
    ModelRow(
        "InternLM3", "InternLM3-8B", "InternLM3ForCausalLM", "LLM", "internlm3", f"{_TEXT}:build_internlm3",
        "16/1 heads (GQA 16, 8B's 32/2), head 128, hidden 128, dynamic NTK rope (factor 6)",
        "HF LlamaForCausalLM (transformers maps internlm3 to Llama)",
        note="scenarios stay below max_position_embeddings (1024): dynamic NTK as InternLM2.5",
    ),
    ModelRow(
        "Qwen3", "Qwen3-8B", "Qwen3ForCausalLM", "LLM", "qwen3", f"{_TEXT}:build_qwen3",
        "8/2 heads (GQA 4), head 128, q/k RMSNorm, hidden 128",
        "HF Qwen3ForCausalLM",
    ),
    ModelRow(
        "Qwen3-MoE", "Qwen3-30B-A3B", "Qwen3MoeForCausalLM", "LLM", "qwen3_moe", f"{_TEXT}:build_qwen3_moe",
        "16/2 heads (GQA 8), head 128, 128 experts top-8, norm_topk_prob",
        "HF Qwen3MoeForCausalLM",
    ),
    # head 16 (hidden 64, 4/2 heads): the models of the engine scenarios (prefix caching, chunked prefill,
    # a long run over many KV blocks, tp=2, third-party plugin)
    *(
        ModelRow(family, "engine scenarios (head 16)", arch, "LLM", kind, f"{_TEXT}:build_{kind}", shape, f"HF {arch}")
        for family, arch, kind, shape in (
            ("Llama", "LlamaForCausalLM", "llama", "4/2 heads, head 16"),
            ("Qwen2", "Qwen2ForCausalLM", "qwen2", "4/2 heads, head 16, QKV bias"),
            ("Qwen2-MoE", "Qwen2MoeForCausalLM", "qwen2_moe", "4/2 heads, head 16, 8 experts top-2, shared expert"),
            ("Mixtral", "MixtralForCausalLM", "mixtral", "4/2 heads, head 16, 8 experts top-2"),
            ("Mistral", "MistralForCausalLM", "mistral", "4/2 heads, head 16, sliding window 8 on every layer"),
        )
    ),
    # --- end of LLM rows ---
    # --- Qwen-VL rows (tiny_vlms) ---
    # The LLM part realistic in attention shape; vision towers of 2-4 blocks, 4-16 merged image tokens per image.
    # Oracle: HF transformers greedy generate on LMDeploy's own input_ids / pixel_values / image_grid_thw (+
    # mm_token_type_ids), one request at a time (dlinfer_lmdeploy.testing.vlm).
    ModelRow(
        "Qwen2-VL", "Qwen2-VL-2B/7B", "Qwen2VLForConditionalGeneration", "VLM", "qwen2_vl",
        "dlinfer_lmdeploy.testing.tiny_vlms:build_qwen2_vl",
        "7/1 heads (GQA 7, 7B's 28/4), head 64, QKV bias, mrope; vision: 2 blocks (head 64), 2-D vision rope, "
        "patch 14, 2x2 merge",
        "HF Qwen2VLForConditionalGeneration",
        needs_torchvision=True,
        note="vision MLP activation GELU: LMDeploy 0.18 computes exact GELU where real Qwen2-VL checkpoints "
        "declare quick_gelu (qwen2_vl.py VisionMlp), on every backend; HF computes quick_gelu",
    ),
    ModelRow(
        "Qwen2.5-VL", "Qwen2.5-VL-7B", "Qwen2_5_VLForConditionalGeneration", "VLM", "qwen2_5_vl",
        "dlinfer_lmdeploy.testing.tiny_vlms:build_qwen2_5_vl",
        "4/2 heads (GQA 2), head 64, mrope; vision: 4 RMSNorm + SiLU-gated MLP blocks, window attention "
        "(56 px windows) with full attention in blocks 1 and 3",
        "HF Qwen2_5_VLForConditionalGeneration",
        needs_torchvision=True,
    ),
    ModelRow(
        "Qwen3-VL", "Qwen3-VL-8B", "Qwen3VLForConditionalGeneration", "VLM", "qwen3_vl",
        "dlinfer_lmdeploy.testing.tiny_vlms:build_qwen3_vl",
        "3 layers, 4/1 heads (GQA 4, 8B's 32/8), head 128, q/k RMSNorm, interleaved mrope; vision: 3 blocks, "
        "patch 16, learned position embeddings, deepstack from blocks 0 and 1",
        "HF Qwen3VLForConditionalGeneration",
        needs_torchvision=True,
    ),
    # --- end of Qwen-VL rows ---
    # --- InternVL rows (tiny_internvl) ---
    # Vision: InternViT of 2 blocks (hidden 64, 2 heads), 56x56 tiles of 14x14 patches, pixel shuffle 0.5 -> 4 image
    # tokens per tile; dynamic tiling (1-4 tiles + thumbnail). Vision attention is plain SDPA in LMDeploy's model
    # files (no dlinfer op); vision linears go through dlinfer `linear`, RMSNorm towers through `rms_norm`.
    # Oracle: HF InternVLForConditionalGeneration greedy generate on LMDeploy's own input_ids / pixel_values.
    ModelRow(
        "InternVL2", "InternVL2-2B", "InternVLChatModel", "VLM", "internvl2",
        "dlinfer_lmdeploy.testing.tiny_internvl:build_internvl2",
        "chat format; InternLM2 LLM 4/2 heads (GQA 2, InternLM2-1.8B's 16/8), head 64, fused wqkv ('hgd'); "
        "vision: LayerNorm, qkv bias; dynamic tiling up to 4 tiles + thumbnail",
        "HF InternVLForConditionalGeneration (Llama text) with the same weights (oracle/)",
        needs_torchvision=True,
        note="the checkpoint ships our own AutoConfig class (auto_map): open with trust_remote_code=True",
    ),
    ModelRow(
        "InternVL2", "InternVL2-2B (CLIP image processor, one tile)", "InternVLChatModel", "VLM",
        "internvl2_single_tile", "dlinfer_lmdeploy.testing.tiny_internvl:build_internvl2_single_tile",
        "as internvl2 without dynamic tiling: a saved CLIPImageProcessor (PIL backend without torchvision), one "
        "56x56 tile per image",
        "HF InternVLForConditionalGeneration (Llama text) with the same weights (oracle/)",
        note="runs without torchvision (the CI tests session)",
    ),
    ModelRow(
        "InternVL-1.5", "InternVL-Chat-V1-5", "InternVLChatModel", "VLM", "internvl1_5",
        "dlinfer_lmdeploy.testing.tiny_internvl:build_internvl1_5",
        "chat format; InternLM2 LLM 6/1 heads (GQA 6, InternLM2-20B's 48/8), head 64; vision: InternViT-6B style "
        "RMSNorm + q/k RMSNorm (dlinfer rms_norm), no qkv bias; dynamic tiling up to 3 tiles + thumbnail",
        "HF InternVLForConditionalGeneration (Llama text) with the same weights (oracle/)",
        needs_torchvision=True,
        note="the checkpoint ships our own AutoConfig class (auto_map): open with trust_remote_code=True",
    ),
    ModelRow(
        "InternVL3.5 (HF format)", "InternVL3_5-8B-HF", "InternVLForConditionalGeneration", "VLM", "internvl3_5_hf",
        "dlinfer_lmdeploy.testing.tiny_internvl:build_internvl3_5_hf",
        "Qwen3 LLM 4/1 heads (GQA 4, Qwen3-8B's 32/8), head 128, q/k RMSNorm; vision: LayerNorm, qkv bias; "
        "GotOcr2 tiling up to 4 tiles + thumbnail",
        "HF InternVLForConditionalGeneration",
        needs_torchvision=True,
    ),
    # --- end of InternVL rows ---
    # --- CogVLM rows (tiny_cogvlm) ---
    # Original checkpoint layout (no HF class); every vision_expert_* weight equals its language_expert_* twin, so
    # the LM is a Llama with CogVLM's position ids whatever the routing. Oracle: HF LlamaForCausalLM (oracle/) on
    # inputs_embeds + CogVLM position ids, image features from tiny_cogvlm's EVA2-CLIP + GLU reference (written
    # from the published architecture, not LMDeploy's code), fed LMDeploy's exact input_ids / pixel_values.
    ModelRow(
        "CogVLM", "CogVLM-chat (cogvlm-chat-hf, 17B)", "CogVLMForCausalLM", "VLM", "cogvlm",
        "dlinfer_lmdeploy.testing.tiny_cogvlm:build_cogvlm",
        "Vicuna-7B-style LM with visual-expert layers: 2 heads of 128 (MHA), hidden 256; EVA2-CLIP of 2 post-norm "
        "blocks (hidden 64) at 490 px / patch 14 (num_positions 1226 selects LMDeploy's CogVLM(1) branch: no "
        "downsample, 1227 image tokens), GLU adapter, boi/eoi",
        _COGVLM_ORACLE,
        needs_torchvision=True,
        engine={"session_len": 2048},
        skipped={"two_images": _COGVLM_TWO_IMAGES},
        note="LMDeploy's cogvlm chat template ('Question: ... Answer:') is picked for a checkpoint path containing "
        "'cogvlm' and not 'cogvlm2' (the tests' paths do)",
    ),
    ModelRow(
        "CogVLM2", "CogVLM2-Llama3-chat-19B", "CogVLMForCausalLM", "VLM", "cogvlm2",
        "dlinfer_lmdeploy.testing.tiny_cogvlm:build_cogvlm2",
        "Llama3-8B-style LM with visual-expert layers: 4/1 heads (num_multi_query_heads; GQA 4 as 32/8), head 128, "
        "hidden 512, vision-expert qkv bias (zero: degenerate); EVA2-CLIP of 2 post-norm blocks (hidden 64) at 112 "
        "px / patch 14, 2x2 stride-2 conv downsample -> 18 image tokens, GLU adapter, boi/eoi",
        _COGVLM_ORACLE,
        needs_torchvision=True,
        skipped={"two_images": _COGVLM_TWO_IMAGES},
        note="rope base 10000: LMDeploy 0.18's cogvlm.py hard-codes it for CogVLM2 too (the original CogVLM2 code "
        "uses 500000), and the oracle follows LMDeploy. Chat template: LMDeploy's 'base' (the tokenizer has no "
        "chat template; with one, LMDeploy 0.18 fails every CogVLM2 image request on every backend: "
        "CogVLMVisionModel.proc_messages reads chat_template.user, which HFChatTemplate lacks)",
    ),
    # --- end of CogVLM rows ---
)

BY_KIND: dict[str, ModelRow] = {row.kind: row for row in ROWS}
assert len(BY_KIND) == len(ROWS), "model table: duplicate kind"


# --- the README's supported-model table, generated from ROWS and the recorded GPU results ---

GPU_RESULTS = Path(__file__).resolve().parents[3] / "benchmarks" / "h200" / "model-table.json"
"""``{"commit": ..., "gpu": ..., "rows": {kind: {"eager": "pass"|"fail: ...", "graph": ...}}}``, written by
``tests/test_e2e_gpu.py`` (``DLINFER_MODEL_TABLE_OUT``) on the GPU machine and committed."""

README_BEGIN = "<!-- model-table:begin (generated by python -m dlinfer_lmdeploy.testing.model_table; do not edit) -->"
README_END = "<!-- model-table:end -->"
SIM_DEVICES = ("ascend", "camb")


def _gpu_cell(kind: str, results: dict) -> str:
    rec = results.get("rows", {}).get(kind)
    if not rec:
        return "not run"
    return " / ".join(f"{mode} {rec[mode]}" for mode in ("eager", "graph") if mode in rec)


def _sim_cell(row: ModelRow, device: str, sim_results: dict[str, set[str]]) -> str:
    if device in row.refused:
        return f"refused: {row.refused[device]}"
    if row.kind not in sim_results.get(device, set()):
        return "not run"
    from dlinfer_lmdeploy.testing import sim_e2e

    return f"bf16, {' + '.join(sim_e2e.SIMULATED_MODES[device])} (CI)"


def markdown_table(results: dict | None = None, sim_results: dict[str, set[str]] | None = None) -> str:
    """The supported-model table: one line per row of :data:`ROWS`."""
    if results is None:
        results = json.loads(GPU_RESULTS.read_text()) if GPU_RESULTS.exists() else {}
    if sim_results is None:
        sim_results = simulated_kinds()
    gpu = results.get("gpu", "H200")
    head = (
        "| family | checkpoints | LMDeploy architecture | type | tiny stand-in | CPU fp32 (CI) | "
        f"{gpu} bf16, maca | Ascend simulator | Cambricon simulator |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in ROWS:
        cpu = "refused: " + r.refused["cpu"] if "cpu" in r.refused else "tokens == oracle"
        lines.append(
            f"| {r.family} | {r.checkpoints} | `{r.architecture}` | {r.modality} | {r.shape} | {cpu} | "
            f"{_gpu_cell(r.kind, results)} | {_sim_cell(r, 'ascend', sim_results)} | "
            f"{_sim_cell(r, 'camb', sim_results)} |"
        )
    commit = results.get("commit")
    foot = f"\n\nGPU column: `tests/test_e2e_gpu.py` at commit {commit}." if commit else ""
    return "\n".join(lines) + foot


def record_gpu_result(kind: str, mode: str, failures: list[str], eager_decode_steps: int | None = None) -> None:
    """Merge one GPU outcome into ``$DLINFER_MODEL_TABLE_OUT`` (no-op when unset): a row/mode passes only if every
    test of it passed (a failure is sticky) and, in graph mode, no decode step ran eagerly."""
    import os

    out = os.environ.get("DLINFER_MODEL_TABLE_OUT")
    if not out:
        return
    import subprocess

    import torch

    target = Path(out)
    data = json.loads(target.read_text()) if target.exists() else {}
    if "commit" not in data:
        commit = os.environ.get("DLINFER_COMMIT", "")  # the GPU machine gets a copy of the tree without .git
        with contextlib.suppress(OSError):
            commit = commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                              text=True, cwd=Path(__file__).parent).stdout.strip()
        data["commit"] = commit or "unknown"
        data["gpu"] = torch.cuda.get_device_name(0).replace("NVIDIA ", "") if torch.cuda.is_available() else "GPU"
    rows = data.setdefault("rows", {})
    status = "pass" if not failures else "FAIL"
    if mode == "graph" and eager_decode_steps:
        status = f"FAIL ({eager_decode_steps} eager decode steps)"
    if rows.get(kind, {}).get(mode, "pass") != "pass":
        status = rows[kind][mode]
    rows.setdefault(kind, {})[mode] = status
    target.write_text(json.dumps(data, indent=1, sort_keys=True))


def simulated_kinds() -> dict[str, set[str]]:
    """device -> kinds the vendor-simulator end-to-end tests run in CI (declared by those tests' shared module)."""
    try:
        from dlinfer_lmdeploy.testing import sim_e2e
    except ImportError:
        return {}
    return {device: set(kinds) for device, kinds in getattr(sim_e2e, "SIMULATED_KINDS", {}).items()}


def render_into(readme: Path) -> str:
    """``readme``'s text with the generated table between the markers (raises if the markers are missing)."""
    text = readme.read_text()
    start, end = text.index(README_BEGIN) + len(README_BEGIN), text.index(README_END)
    return text[:start] + "\n" + markdown_table() + "\n" + text[end:]


if __name__ == "__main__":
    import sys

    targets = [Path(p) for p in sys.argv[1:]]
    if not targets:
        print(markdown_table())
    for target in targets:
        target.write_text(render_into(target))
        print(f"wrote the model table into {target}")
