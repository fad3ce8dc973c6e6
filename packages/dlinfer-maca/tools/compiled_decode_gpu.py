"""LMDeploy on one NVIDIA GPU with the maca plugin, graph mode, with and without the compiled decode forward.

    python packages/dlinfer-maca/tools/compiled_decode_gpu.py --shapes 1b,8b --out compiled-decode.json

For each model shape (random bf16 weights built locally: Llama-3.2-1B and Llama-3-8B shapes) and each
``DLINFER_COMPILE_DECODE`` in (0, 1), one process serves (``device_type="maca"``, ``eager_mode=False``):
  * throughput: ``--prompts`` prompts of 128 tokens, 128 new tokens each, greedy, ignore_eos -> output tok/s;
  * batch 1: ``--streams`` streamed requests of 128 new tokens -> decode ms/step (first token excluded), median.
With the option on, graphed decode steps run ``torch.compile(model, backend="dlinfer")`` (dlinfer passes +
Inductor with dlinfer ops as extern kernels) inside the CUDA-graph capture; the first steps of each batch
bucket include Inductor's compile time, so the warm-up request covers every bucket the timed runs use.
Prints one row per run, the compiled/plain ratios, and whether the first 32 tokens of 4 prompts agree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[2] / "dlinfer-lmdeploy" / "bench"))
from lmdeploy_e2e_gpu import _prompts, host_probe_ms  # noqa: E402

PROMPT_TOKENS, NEW_TOKENS = 128, 128
SHAPES = ("1b", "8b")
"""``1b``: ``tiny_models.llama_3_2_1b_config`` (llama3 rope scaling, tied embeddings); ``8b``:
``tiny_models.llama_3_8b_config`` (the e2e benches' Llama-3-8B shape: rope theta 5e5 without scaling, 8192
positions, untied embeddings)."""


def run_one(model_dir: str, prompts_n: int, streams: int) -> dict[str, object]:
    import torch
    import torch._dynamo
    from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline

    import dlinfer_lmdeploy  # noqa: F401

    torch._dynamo.config.cache_size_limit = 64  # one specialisation per capture bucket
    cfg = PytorchEngineConfig(device_type="maca", eager_mode=False, max_batch_size=prompts_n,
                              session_len=PROMPT_TOKENS + NEW_TOKENS + 64, cache_max_entry_count=0.5,
                              block_size=64)
    t0 = time.perf_counter()
    pipe = pipeline(model_dir, backend_config=cfg, log_level="ERROR")
    startup = time.perf_counter() - t0
    gen = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, top_k=1, ignore_eos=True)
    try:
        prompts = _prompts(prompts_n, PROMPT_TOKENS)
        t0 = time.perf_counter()
        pipe(prompts, gen_config=GenerationConfig(max_new_tokens=8, ignore_eos=True), do_preprocess=False)
        pipe(prompts[:1], gen_config=GenerationConfig(max_new_tokens=8, ignore_eos=True), do_preprocess=False)
        warmup = time.perf_counter() - t0
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        outs = pipe(prompts, gen_config=gen, do_preprocess=False)
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        n_out = sum(len(o.token_ids) for o in outs)
        per_stream = []
        for k in range(streams):
            stamps: list[float] = []
            count = 0
            for out in pipe.stream_infer(_prompts(1, PROMPT_TOKENS, seed=1 + k), gen_config=gen,
                                         do_preprocess=False):
                n = len(out.token_ids or [])
                if n:
                    stamps.append(time.perf_counter())
                    count += n
            if len(stamps) > 1:
                per_stream.append((stamps[-1] - stamps[0]) / max(count - 1, 1))
    finally:
        pipe.close()
    return {
        "compile_decode": os.environ.get("DLINFER_COMPILE_DECODE", "0"),
        "gpu": torch.cuda.get_device_name(0),
        "startup_s": round(startup, 2),
        "warmup_s": round(warmup, 2),
        "output_tok_per_s": round(n_out / elapsed, 1),
        "decode_ms_per_step_batch1": round(statistics.median(per_stream) * 1e3, 3) if per_stream else None,
        "batch1_streams_ms": [round(t * 1e3, 3) for t in per_stream],
        "host_probe_ms": host_probe_ms(3),
        "first_tokens": [list(o.token_ids[:32]) for o in outs[:4]],
    }


def build(shape: str, model_dir: Path) -> None:
    import torch

    from dlinfer_lmdeploy.testing import tiny_models

    if not (model_dir / "config.json").exists():
        config = tiny_models.llama_3_2_1b_config() if shape == "1b" else tiny_models.llama_3_8b_config()
        tiny_models.build_on_device(config, model_dir, device="cuda", dtype=torch.bfloat16)
    torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="1b,8b")
    parser.add_argument("--model-root", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")))
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--streams", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=540, help="seconds per run")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(str(args.one), args.prompts, args.streams)))
        return 0
    results: list[dict[str, object]] = []
    for shape in args.shapes.split(","):
        model_dir = args.model_root / f"llama-{shape}-rand-bf16"
        build(shape, model_dir)
        for flag in ("0", "1"):
            cmd = [sys.executable, str(HERE), "--one", str(model_dir), "--prompts", str(args.prompts),
                   "--streams", str(args.streams)]
            env = dict(os.environ, DLINFER_COMPILE_DECODE=flag)
            try:
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                res = json.loads(lines[-1][7:]) if lines else {"error": (proc.stderr or proc.stdout)[-3000:]}
            except subprocess.TimeoutExpired:
                res = {"error": f"timeout after {args.timeout}s"}
            res.update(shape=shape, compile_decode=flag)
            results.append(res)
            print(json.dumps({k: v for k, v in res.items() if k != "first_tokens"}), file=sys.stderr)
            if args.out:
                args.out.write_text(json.dumps(results, indent=2))
    print("| shape | compiled decode | output tok/s | decode ms/step (batch 1) | startup s | warm-up s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['shape']} | {r['compile_decode']} | error | | | |")
            continue
        print(f"| {r['shape']} | {r['compile_decode']} | {r['output_tok_per_s']} | {r['decode_ms_per_step_batch1']} "
              f"| {r['startup_s']} | {r['warmup_s']} |")
    for shape in args.shapes.split(","):
        pair = {r["compile_decode"]: r for r in results if r["shape"] == shape and "error" not in r}
        if len(pair) == 2:
            a, b = pair["0"], pair["1"]
            same = sum(x == y for x, y in zip(a["first_tokens"], b["first_tokens"], strict=True))
            print(f"{shape}: compiled/plain tok/s {b['output_tok_per_s'] / a['output_tok_per_s']:.3f}, "
                  f"ms/step {b['decode_ms_per_step_batch1'] / a['decode_ms_per_step_batch1']:.3f}; "
                  f"first 32 tokens identical for {same}/4 prompts")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
