"""One end-to-end scenario with raw logits, in a separate process: the tp>1 GPU tests (bf16 teacher-forcing check).

    python -m dlinfer_lmdeploy.testing.scenario_cli SCENARIO MODEL DEVICE MODE '{"tp": 2}' TOPK

Runs every phase of ``scenarios.BY_NAME[SCENARIO]`` (or ``tiny_quant.SCENARIOS[SCENARIO]``) on one engine
(``device_type=DEVICE``, bf16, eager or graph ``MODE``, ``logprobs_mode="raw_logits"``, the scenario's engine
overrides, then the given ones) and prints one ``RESULT`` line: ``{"runs": [[input_ids, generated_ids,
[{token: logit}, ...]], ...]}`` in request order, the ``bf16_check.Run`` triples. :func:`run` runs it under a
deadline (stacks of every rank on timeout).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dlinfer_lmdeploy.testing.child import emit, run_module


def tp_refusal(model: str | Path, tp: int) -> str | None:
    """Why LMDeploy cannot split the checkpoint at ``model`` over ``tp`` ranks (``None`` when it can): the query
    heads must divide by tp, and the KV heads too unless tp divides by them and LMDeploy's model class replicates
    KV heads (``num_replicate_kv_heads``; e.g. llama.py does, qwen2_moe.py and mixtral.py do not)."""
    import importlib.util

    cfg = json.loads((Path(model) / "config.json").read_text())
    cfg = {**cfg, **cfg.get("text_config", {}), **cfg.get("llm_config", {})}
    heads = int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    if heads % tp:
        return f"{heads} query heads do not divide by tp={tp}"
    if kv % tp == 0:
        return None
    if tp % kv:
        return f"{kv} KV heads and tp={tp}: neither divides the other"
    from lmdeploy.pytorch.models.module_map import MODULE_MAP

    target = MODULE_MAP.get(cfg["architectures"][0], "")
    spec = importlib.util.find_spec(target.rpartition(".")[0]) if target else None
    source = Path(spec.origin).read_text() if spec is not None and spec.origin else ""
    if "num_replicate_kv_heads" not in source:
        return f"LMDeploy's {target or cfg['architectures'][0]} does not replicate its {kv} KV heads over tp={tp} ranks"
    return None


def engine_overrides(scenario: Any, device: str, mode: str, extra: Mapping[str, Any], max_batch_size: int = 4) -> Any:
    """The GPU tests' engine configuration of ``scenario`` (one place for tp=1 in-process and tp>1 here)."""
    from dlinfer_lmdeploy.testing import runner

    return runner.engine_config(
        device,
        dtype="bfloat16",
        eager_mode=(mode == "eager"),
        max_batch_size=max_batch_size,
        logprobs_mode="raw_logits",
        **{**scenario.engine, **extra},
    )


def run(
    scenario: str, model: str | Path, device: str, mode: str, extra: Mapping[str, Any], topk: int, *,
    deadline_s: float, env: Mapping[str, str] | None = None,
) -> list[tuple[list[int], list[int], list[dict[int, float]]]]:
    """The scenario's runs from a child process (``bf16_check.Run`` triples, logit keys back to ints)."""
    argv = [scenario, str(model), device, mode, json.dumps(dict(extra)), str(topk)]
    res = run_module("dlinfer_lmdeploy.testing.scenario_cli", argv, deadline_s=deadline_s, env=env,
                     what=f"scenario {scenario} on {device}/{mode} {dict(extra)}")
    return [(ids, gen, [{int(t): float(v) for t, v in step.items()} for step in top]) for ids, gen, top in res["runs"]]


def main(argv: list[str]) -> int:
    import dlinfer_lmdeploy  # noqa: F401  (explicit wiring)
    from dlinfer_lmdeploy.testing import runner, tiny_quant
    from dlinfer_lmdeploy.testing.scenarios import BY_NAME

    name, model, device, mode, extra, topk = argv[0], argv[1], argv[2], argv[3], json.loads(argv[4]), int(argv[5])
    scenario = BY_NAME[name] if name in BY_NAME else tiny_quant.SCENARIOS[name]
    runs: list[Any] = []
    with runner.open_pipeline(model, engine_overrides(scenario, device, mode, extra)) as pipe:
        for phase in scenario.phases:
            ids = [runner.encode(pipe, p) for p in phase]
            outs = runner.generate_with_logits(pipe, phase, scenario.new_tokens, topk)
            runs += [[i, tokens, top] for i, (tokens, top) in zip(ids, outs, strict=True)]
        emit({"runs": runs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
