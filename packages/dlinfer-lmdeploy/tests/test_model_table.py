"""The model table is consistent and the README's supported-model table is generated from it (no drift)."""

from __future__ import annotations

import importlib
from pathlib import Path

from dlinfer_lmdeploy.testing import model_table, scenarios

README = Path(__file__).resolve().parents[1] / "README.md"
TOP_README = Path(__file__).resolve().parents[3] / "README.md"


def test_every_row_has_a_builder_and_is_exercised() -> None:
    scenario_kinds = {s.model for s in scenarios.SCENARIOS}
    for row in model_table.ROWS:
        module, _, fn = row.builder.partition(":")
        assert callable(getattr(importlib.import_module(module), fn)), row.builder
        if row.modality == "LLM":  # VLM rows run every scenario of testing/vlm.py
            assert row.kind in scenario_kinds, f"LLM row {row.kind} has no end-to-end scenario"


def test_the_seed_families_are_in_the_table() -> None:
    families = {row.family for row in model_table.ROWS}
    seed = {"InternLM2", "InternLM2.5", "Llama3", "Mixtral", "Qwen2", "Qwen2-MoE", "Qwen3", "Qwen3-MoE", "InternLM3",
            "InternVL2", "InternVL-1.5", "InternVL3.5 (HF format)", "CogVLM", "CogVLM2", "Qwen2-VL", "Qwen2.5-VL",
            "Qwen3-VL"}
    assert seed <= families, f"missing families: {sorted(seed - families)}"


def test_readmes_hold_the_generated_table() -> None:
    for readme in (README, TOP_README):
        text = readme.read_text()
        assert model_table.README_BEGIN in text, f"{readme}: no model-table markers"
        assert model_table.render_into(readme) == text, (
            f"{readme}: the supported-model table is stale; run "
            f"python -m dlinfer_lmdeploy.testing.model_table {readme}"
        )
