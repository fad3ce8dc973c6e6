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

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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

ROWS: tuple[ModelRow, ...] = (
    # --- LLM rows (tiny_models) ---
    # --- end of LLM rows ---
    # --- Qwen-VL rows (tiny_vlms) ---
    # --- end of Qwen-VL rows ---
    # --- InternVL rows (tiny_internvl) ---
    # --- end of InternVL rows ---
    # --- CogVLM rows (tiny_cogvlm) ---
    # --- end of CogVLM rows ---
)

BY_KIND: dict[str, ModelRow] = {row.kind: row for row in ROWS}
assert len(BY_KIND) == len(ROWS), "model table: duplicate kind"
