"""Checks low-precision generations against Hugging Face fp32 logits by teacher forcing (used by the GPU tests).

bf16 cannot reproduce fp32 greedy tokens exactly, so the check is on logits, step by step along the sequence the
engine generated:

* the engine reports the raw logits of its top-k tokens at every step (``logprobs_mode="raw_logits"``);
  Hugging Face recomputes the logits of the same steps from the same prefixes (teacher forcing) in fp32 (the
  truth) and in bf16 (how far bf16 arithmetic alone moves them on these weights and inputs);
* the engine's logit error against fp32 (max and mean over the steps) must stay within ``FACTOR`` x HF's own bf16
  error + ``FLOOR``;
* every chosen token must be the engine's own top-1 and within twice that tolerance of fp32's best logit;
* the chosen tokens must be fp32's argmax about as often as HF bf16's argmax is (``AGREE_SLACK``), pooled over all
  requests of a mode: per request (10-24 steps) a single near-tie flip moves the rate by 4-10 points, so the
  statistic is taken over every step of the call (callers check a row's requests in one call);
* with several modes (eager, graph) each passes the same checks; the length of their agreement is reported (the
  two may part at a near-tie).

A wrong KV block, mask or position moves logits by several units and fails the first check
(``tests/test_oracle.py`` runs this checker on CPU generations, clean and corrupted).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dlinfer_lmdeploy.testing import hf_oracle
from dlinfer_lmdeploy.testing.scenarios import Scenario

FACTOR = 3.0
FLOOR = 0.1
AGREE_SLACK = 0.1
Run = tuple[list[int], list[int], list[dict[int, float]]]
"""prompt ids, generated ids, the engine's top-k raw logits per step"""


def _errors(top: list[dict[int, float]], ref: torch.Tensor, other: torch.Tensor | None = None) -> list[float]:
    """Per step: the largest |logit - ref| over the engine's top-k tokens, the logits being the engine's own
    or, with ``other`` ([steps, V]), those of ``other`` at the same tokens. ``ref``/``other`` on the host."""
    if other is None:
        return [max(abs(v - float(ref[i, t])) for t, v in step.items()) for i, step in enumerate(top)]
    return [max(abs(float(other[i, t] - ref[i, t])) for t in step) for i, step in enumerate(top)]


TeacherForced = Callable[..., list[torch.Tensor]]
"""``(pairs, *, device, dtype) -> logits per pair`` (``hf_oracle.teacher_forced`` without its path argument)"""


def _eos(path: str | Path) -> int | list[int]:
    """EOS id(s) of a checkpoint: top level, or the text model's config of a VLM (``text_config``/``llm_config``)."""
    config = json.loads((Path(path) / "config.json").read_text())
    for sub in (config, config.get("text_config") or {}, config.get("llm_config") or {}):
        if sub.get("eos_token_id") is not None:
            return sub["eos_token_id"]
    raise KeyError(f"{path}/config.json names no eos_token_id (top level, text_config or llm_config)")


def check_against_hf(
    scenario: Scenario,
    path: str | Path,
    results: dict[str, list[Run]],
    device: str,
    teacher_forced: TeacherForced | None = None,
    calibration: torch.dtype = torch.bfloat16,
) -> tuple[list[dict[str, Any]], list[str]]:
    """``results``: mode -> runs of every request in order -> (per-request statistics, failure messages).
    ``teacher_forced``: how HF recomputes the logits (default: ``hf_oracle.teacher_forced`` on ``path``; VLMs pass
    ``vlm.teacher_forced_fn``, which feeds the captured images). ``calibration``: the dtype whose HF error sets the
    tolerance (bf16; an fp16 engine may pass fp16, an fp32 engine fp64: HF's own rounding sensitivity, e.g. where
    activations are re-quantised and one rounding flip moves the logits; the stats keep their ``hf_bf16_*`` names)."""
    eos = _eos(path)
    banned = {eos} if isinstance(eos, int) else set(eos)
    if teacher_forced is None:
        teacher_forced = functools.partial(hf_oracle.teacher_forced, path)
    stats: list[dict] = []
    failures: list[str] = []
    for mode, runs in results.items():
        pairs = [(p, g) for p, g, _ in runs]
        n_steps = n_agree = 0
        n_agree_hf = 0.0
        exact = teacher_forced(pairs, device=device, dtype=torch.float32)
        bf16 = teacher_forced(pairs, device=device, dtype=calibration)
        cal = str(calibration).removeprefix("torch.")
        for r, ((_, generated, top), f32, b16) in enumerate(zip(runs, exact, bf16, strict=True)):
            where = f"{scenario.name}/{mode} request {r}"
            if not len(generated) == len(top) == scenario.new_tokens:
                failures.append(
                    f"{where}: {len(generated)} tokens, {len(top)} logit steps, {scenario.new_tokens} asked"
                )
                continue
            # raw logits are reported before LMDeploy bans EOS (ignore_eos): drop it, as HF's side does
            top = [{t: v for t, v in st.items() if t not in banned} for st in top]
            not_top1 = [
                i for i, (t, st) in enumerate(zip(generated, top, strict=True)) if st.get(t) != max(st.values())
            ]
            if not_top1:
                failures.append(f"{where}: at steps {not_top1[:5]} the token is not the engine's own top-1")
            f32_host, b16_host = f32.cpu(), b16.cpu()  # one transfer instead of one sync per element
            err = _errors(top, f32_host)
            hf_err = _errors(top, f32_host, b16_host)  # HF's own bf16 error on the same tokens
            deficits, gaps = hf_oracle.deficits_and_gaps(f32, generated)
            best = f32.argmax(-1)
            agree = sum(int(best[i]) == t for i, t in enumerate(generated)) / len(generated)
            agree_hf = float((b16.argmax(-1) == best).float().mean())
            n_steps += len(generated)
            n_agree += round(agree * len(generated))
            n_agree_hf += agree_hf * len(generated)
            mean_err, mean_hf = sum(err) / len(err), sum(hf_err) / len(hf_err)
            tol = FACTOR * max(hf_err) + FLOOR
            stats.append({
                "request": where, "steps": len(err), "max_err": max(err), "mean_err": mean_err,
                "hf_bf16_max_err": max(hf_err), "hf_bf16_mean_err": mean_hf, "max_deficit": max(deficits),
                "agree_fp32_argmax": agree, "hf_bf16_agree_fp32_argmax": agree_hf,
            })  # fmt: skip
            worst = max(range(len(err)), key=err.__getitem__)
            if err[worst] > tol or mean_err > FACTOR * mean_hf + FLOOR:
                failures.append(
                    f"{where}: logit error against HF fp32 max {err[worst]:.3f} (step {worst}) / mean {mean_err:.3f} "
                    f"exceeds {FACTOR} x HF's own {cal} error (max {max(hf_err):.3f} / mean {mean_hf:.3f}) + {FLOOR}"
                )
            bad = next((i for i, d in enumerate(deficits) if d > 2 * tol), None)
            if bad is not None:
                failures.append(
                    f"{where}: step {bad} chose a token {deficits[bad]:.3f} below HF fp32's best logit "
                    f"(allowed {2 * tol:.3f}); top-2 gap there {gaps[bad]:.3f}"
                )
        if n_steps and n_agree / n_steps < n_agree_hf / n_steps - AGREE_SLACK:
            failures.append(
                f"{scenario.name}/{mode}: the tokens are fp32's argmax at {n_agree / n_steps:.0%} of the {n_steps} "
                f"steps of {len(runs)} requests, HF {cal} manages {n_agree_hf / n_steps:.0%}"
            )
    if "eager" in results and "graph" in results:
        for r, ((_, e, _), (_, g, _)) in enumerate(zip(results["eager"], results["graph"], strict=True)):
            same = next((i for i, (x, y) in enumerate(zip(e, g, strict=True)) if x != y), len(e))
            stats.append({"request": f"{scenario.name} request {r}", "graph_equals_eager_steps": same})
    return stats, failures
