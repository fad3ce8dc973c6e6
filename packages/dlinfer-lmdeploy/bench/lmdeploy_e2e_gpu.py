"""LMDeploy end-to-end on one NVIDIA GPU: dlinfer (maca plugin) against LMDeploy's own CUDA backend.

    python packages/dlinfer-lmdeploy/bench/lmdeploy_e2e_gpu.py --out bench-lmdeploy.json

A Llama-3.2-1B-shaped model with random bf16 weights is built locally (no downloads); then,
each in its own process so that GPU memory and process-wide state never leak between runs,
for device_type in (maca, cuda) x mode in (eager, graph):
  * throughput: 64 prompts of 128 tokens, 256 new tokens each, ignore_eos, greedy -> output tok/s
  * batch 1: one 128-token prompt, 256 new tokens, streamed -> mean time per output token
    (first token excluded).
Prints a markdown table with the maca/cuda ratio per mode and writes all figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

NUM_PROMPTS = 64
PROMPT_TOKENS = 128
NEW_TOKENS = 256


def _prompts(n: int, length: int, seed: int = 0) -> list[str]:
    from dlinfer_lmdeploy.testing.tiny_models import ALPHABET

    rng = random.Random(seed)
    letters = [c for c in ALPHABET if c != "\n"]
    return ["".join(rng.choice(letters) for _ in range(length)) for _ in range(n)]


def run_one(model_dir: str, device: str, mode: str, block_size: int) -> dict[str, object]:
    import torch
    from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline

    import dlinfer_lmdeploy  # noqa: F401

    cfg = PytorchEngineConfig(
        device_type=device,
        eager_mode=(mode == "eager"),
        max_batch_size=NUM_PROMPTS,
        session_len=PROMPT_TOKENS + NEW_TOKENS + 64,
        cache_max_entry_count=0.5,
        block_size=block_size,
    )
    t0 = time.perf_counter()
    pipe = pipeline(model_dir, backend_config=cfg, log_level="ERROR")
    startup = time.perf_counter() - t0
    gen = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, top_k=1, ignore_eos=True)
    try:
        prompts = _prompts(NUM_PROMPTS, PROMPT_TOKENS)
        n_in = [len(pipe.async_engine.tokenizer.encode(p)) for p in prompts]
        pipe(prompts[:4], gen_config=GenerationConfig(max_new_tokens=16, ignore_eos=True), do_preprocess=False)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        outs = pipe(prompts, gen_config=gen, do_preprocess=False)
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        n_out = sum(len(o.token_ids) for o in outs)

        stamps: list[float] = []
        count = 0
        for out in pipe.stream_infer(_prompts(1, PROMPT_TOKENS, seed=1), gen_config=gen, do_preprocess=False):
            k = len(out.token_ids or [])
            if k:
                stamps.append(time.perf_counter())
                count += k
        tpot = (stamps[-1] - stamps[0]) / max(count - 1, 1) if len(stamps) > 1 else float("nan")
        first_tokens = [list(o.token_ids[:32]) for o in outs[:4]]
    finally:
        pipe.close()
    return {
        "device_type": device,
        "mode": mode,
        "block_size": block_size,
        "gpu": torch.cuda.get_device_name(0),
        "startup_s": round(startup, 2),
        "prompt_tokens_mean": sum(n_in) / len(n_in),
        "output_tokens": n_out,
        "throughput_s": round(elapsed, 3),
        "output_tok_per_s": round(n_out / elapsed, 1),
        "batch1_tokens": count,
        "batch1_ms_per_token": round(tpot * 1e3, 3),
        "first_tokens": first_tokens,
    }


def build_model(model_dir: Path) -> None:
    import torch

    from dlinfer_lmdeploy.testing import tiny_models

    tiny_models.build_on_device(tiny_models.llama_3_2_1b_config(), model_dir, device="cuda", dtype=torch.bfloat16)
    torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "llama-3.2-1b-rand")
    parser.add_argument("--devices", default="maca,cuda")
    parser.add_argument("--modes", default="eager,graph")
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--timeout", type=int, default=240, help="seconds per (device, mode) run")
    parser.add_argument("--one", nargs=2, metavar=("DEVICE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        print("RESULT " + json.dumps(run_one(str(args.model_dir), args.one[0], args.one[1], args.block_size)))
        return 0

    t0 = time.perf_counter()
    build_model(args.model_dir)
    print(f"model ready in {time.perf_counter() - t0:.1f}s at {args.model_dir}", file=sys.stderr)
    results: list[dict[str, object]] = []
    for mode in args.modes.split(","):
        for device in args.devices.split(","):
            cmd = [sys.executable, __file__, "--one", device, mode, "--model-dir", str(args.model_dir)]
            cmd += ["--block-size", str(args.block_size)]
            t1 = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                results.append({"device_type": device, "mode": mode, "error": f"timeout after {args.timeout}s"})
                continue
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                tail = (proc.stderr or proc.stdout)[-3000:]
                results.append({"device_type": device, "mode": mode, "error": f"rc={proc.returncode}: {tail}"})
                print(f"[{device}/{mode}] FAILED\n{tail}", file=sys.stderr)
                continue
            res = json.loads(lines[-1][len("RESULT ") :])
            res["wall_s"] = round(time.perf_counter() - t1, 1)
            results.append(res)
            print(
                f"[{device}/{mode}] {res['output_tok_per_s']} tok/s, {res['batch1_ms_per_token']} ms/token",
                file=sys.stderr,
            )

    print("| mode | device_type | output tok/s | batch-1 ms/token | tok/s vs cuda | ms/token vs cuda |")
    print("|---|---|---|---|---|---|")
    by_key = {(r["device_type"], r["mode"]): r for r in results if "error" not in r}
    for r in results:
        if "error" in r:
            print(f"| {r['mode']} | {r['device_type']} | error | | | |")
            continue
        ref = by_key.get(("cuda", r["mode"]))
        ratio = f"{r['output_tok_per_s'] / ref['output_tok_per_s']:.3f}" if ref else "-"
        lat = f"{ref['batch1_ms_per_token'] / r['batch1_ms_per_token']:.3f}" if ref else "-"
        cells = [r["mode"], r["device_type"], r["output_tok_per_s"], r["batch1_ms_per_token"], ratio, lat]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    for mode in args.modes.split(","):
        a, b = by_key.get(("maca", mode)), by_key.get(("cuda", mode))
        if a and b:
            same = sum(x == y for x, y in zip(a["first_tokens"], b["first_tokens"], strict=False))
            print(f"{mode}: first 32 tokens identical maca vs cuda for {same}/4 prompts (bf16: near-ties may differ)")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
