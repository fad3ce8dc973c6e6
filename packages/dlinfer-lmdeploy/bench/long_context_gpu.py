"""Long context on one GPU: prefill and decode at a 32k-token context, prefix caching on, maca vs LMDeploy's cuda.

    python packages/dlinfer-lmdeploy/bench/long_context_gpu.py --shape llama3_8b --context 32768 --out long.json
    python packages/dlinfer-lmdeploy/bench/long_context_gpu.py --dry-run      # CPU device, tiny model, 512 tokens

A random-weight model of ``bench/shapes.py`` (full width) is built on the GPU. Then per device_type, interleaved
(``--rounds``), each in its own process under a deadline (``testing.child``), graph mode, prefix caching on:

* **cold prefill**: one streamed request whose prompt is ``--context`` tokens, ``--new-tokens`` out: time to the
  first token (the whole prefill) and the mean time per later token (decode at the full context);
* **cached prefill**: a second request sharing all but the last ``--suffix`` tokens of that prompt: time to the first
  token, which with a prefix-cache hit covers only the suffix (the JSON records LMDeploy's count of cached tokens
  where the engine reports it);
* the first 32 output tokens of both, to compare the two devices.

LMDeploy's ``cuda`` runs without FlashAttention-3 on the H200 image; the weights are random.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lmdeploy_e2e_gpu import schedule  # noqa: E402


def _prompt(tokens: int, seed: int) -> str:
    """About one token per character with the tiny models' character tokenizer and with random models' BPE."""
    from dlinfer_lmdeploy.testing.tiny_models import ALPHABET

    rng = random.Random(seed)
    letters = [c for c in ALPHABET if c != "\n"]
    return "".join(rng.choice(letters) for _ in range(tokens))


def _stream(pipe: Any, prompt: str, gen: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    stamps: list[float] = []
    tokens: list[int] = []
    for out in pipe.stream_infer([prompt], gen_config=gen, do_preprocess=False):
        if out.token_ids:
            stamps.append(time.perf_counter())
            tokens += list(out.token_ids)
    ttft = stamps[0] - t0 if stamps else float("nan")
    tpot = (stamps[-1] - stamps[0]) / max(len(tokens) - 1, 1) if len(stamps) > 1 else float("nan")
    return {"ttft_s": round(ttft, 4), "decode_ms_per_token": round(tpot * 1e3, 3), "tokens": len(tokens),
            "first_tokens": tokens[:32]}


def run_one(model: str, device: str, context: int, suffix: int, new_tokens: int, dry: bool) -> dict[str, Any]:
    from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline

    import dlinfer_lmdeploy  # noqa: F401
    from dlinfer_lmdeploy import graph_runner
    from dlinfer_lmdeploy.testing.child import emit

    cfg = PytorchEngineConfig(
        device_type=device, eager_mode=False, max_batch_size=4, session_len=context + new_tokens + 256,
        cache_max_entry_count=0.2 if dry else 0.5, block_size=16 if dry else 64, enable_prefix_caching=True,
        dtype="float32" if dry else "auto",
    )
    t0 = time.perf_counter()
    pipe = pipeline(model, backend_config=cfg, log_level="ERROR")
    res: dict[str, Any] = {"device_type": device, "context": context, "suffix": suffix,
                           "startup_s": round(time.perf_counter() - t0, 1)}
    gen = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, top_k=1, ignore_eos=True)
    short = GenerationConfig(max_new_tokens=4, ignore_eos=True)
    pipe([_prompt(64, seed=9)], gen_config=short, do_preprocess=False)
    # warm-up of the paged-prefill path too (history from a prefix-cache hit), so no kernel compiles while timed
    warm = _prompt(min(2048, context), seed=7)
    pipe([warm], gen_config=short, do_preprocess=False)
    pipe([warm[: len(warm) - min(suffix, len(warm) // 2)] + _prompt(suffix, seed=8)], gen_config=short,
         do_preprocess=False)
    prompt = _prompt(context, seed=1)
    res["prompt_tokens"] = len(pipe.async_engine.tokenizer.encode(prompt))
    before = graph_runner.step_counts()
    res["cold"] = _stream(pipe, prompt, gen)
    shared = prompt[: context - suffix]
    res["cached"] = _stream(pipe, shared + _prompt(suffix, seed=2), gen)
    # dlinfer's graph runner runs in this process at tp=1 (LMDeploy's uni executor); cuda: all zero
    res["dlinfer_graph_steps"] = graph_runner.step_counts().since(before).as_dict()
    emit(res)
    pipe.close()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama3_8b")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--suffix", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--devices", default="maca,cuda")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--model-root", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "long-context")
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--dry-run", action="store_true", help="CPU device, tiny widths, fp32, 512-token context")
    ap.add_argument("--one", nargs=2, metavar=("DEVICE", "MODEL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.dry_run:
        args.devices, args.context, args.suffix, args.new_tokens = "cpu", 512, 64, 8
    if args.one:
        run_one(args.one[1], args.one[0], args.context, args.suffix, args.new_tokens, args.dry_run)
        return 0

    from shapes import SHAPES, build

    from dlinfer_lmdeploy.testing import child

    layers = 2 if args.dry_run else (args.layers or SHAPES[args.shape][2])
    model = build(args.shape, layers, args.model_root, "cpu" if args.dry_run else "cuda", tiny=args.dry_run)
    here = str(Path(__file__).resolve().parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    argv_common = ["--context", str(args.context), "--suffix", str(args.suffix), "--new-tokens", str(args.new_tokens)]
    if args.dry_run:
        argv_common.append("--dry-run")
    results: list[dict[str, Any]] = []
    for device in schedule(args.devices.split(","), args.rounds):
        what = f"{model.name} {device} context {args.context}"
        try:
            res = child.run_module("long_context_gpu", ["--one", device, str(model), *argv_common],
                                   deadline_s=args.timeout, env={**env, child.HARD_EXIT_ENV: "1"}, what=what)
        except (child.GenerationTimeout, RuntimeError) as exc:
            res = {"device_type": device, "error": str(exc)[-3000:]}
        res.update(model=model.name, layers=layers)
        results.append(res)
        print(f"[{what}] {json.dumps({k: v for k, v in res.items() if k not in ('cold', 'cached')})} "
              f"cold {res.get('cold')} cached {res.get('cached')}", file=sys.stderr)
        if args.out:
            args.out.write_text(json.dumps(results, indent=2))
    print("| device_type | prompt tokens | cold prefill s | decode ms/token at the context | cached prefill s |")
    print("|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['device_type']} | error | | | |")
            continue
        print(f"| {r['device_type']} | {r['prompt_tokens']} | {r['cold']['ttft_s']} | "
              f"{r['cold']['decode_ms_per_token']} | {r['cached']['ttft_s']} |")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
