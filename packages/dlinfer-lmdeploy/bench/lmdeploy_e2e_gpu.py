"""LMDeploy end-to-end on one NVIDIA GPU: dlinfer (maca plugin) against LMDeploy's own CUDA backend.

    python packages/dlinfer-lmdeploy/bench/lmdeploy_e2e_gpu.py --out bench-lmdeploy.json

A Llama-3.2-1B-shaped model with random bf16 weights is built locally (no downloads); then,
each in its own process so that GPU memory and process-wide state never leak between runs,
for device_type in (maca, cuda) x mode in (eager, graph):
  * throughput: 64 prompts of 128 tokens, 256 new tokens each, ignore_eos, greedy -> output tok/s
  * batch 1: one 128-token prompt, 256 new tokens, streamed -> mean time per output token
    (first token excluded).
Before the timed runs each process warms up with 4 short requests and with the timed batch itself for 2 new
tokens, so that kernel variants chosen by token count are compiled outside the timings (runs before 2026-12-02
warmed up with the 4 short requests only).
Repetition against host noise (the lent machines' host speed varies by up to 1.5x between runs): with
``--rounds N`` every (device_type, mode) process runs N times, interleaved (ABBA order per round pair), each
process streams ``--streams`` batch-1 requests and reports their median, and each process times a fixed
host-side probe (Python + small torch CPU ops) before and after, so that a slow host shows in the figures.
``--budget S`` fits the rounds into one device call: a process that would not finish in the seconds left (judged
by the longest finished one) is not started, and the summary covers the runs done.
Prints per-run rows and, per mode, the median of each metric over rounds and the maca/cuda ratio of those
medians; writes all figures as JSON. ``--quant awq|w8a8`` serves the model quantised into LMDeploy's AWQ W4A16
(group 128, fp16) or W8A8 smooth-quant format (``testing.tiny_quant.quantise_checkpoint``, on the GPU); token
correctness of the quantised paths is the job of ``tests/test_quant_e2e_gpu.py``.
``--first-long N``: right after the engine is built (before any other request), two single requests of about N
prompt tokens each (different random prompts), max_new_tokens=1, are timed one after the other and recorded as
``first_long`` (the first pays the kernel compiles that engine warm-up left out; run with
``DLINFER_PREFILL_WARMUP=0`` and without it to see what the prefill warm-up saves, and ``startup_s`` for its cost).
``--variant NAME=DIR`` (repeatable) adds the run label ``maca@NAME``: device_type maca with ``DIR`` first on the
child's PYTHONPATH, so a package tree of another commit shadows the checkout's, e.g. before/after of a change in
one call: ``git archive REV packages/dlinfer-maca/src | tar -x -C /tmp/before`` (outside the checkout, or untracked
in it so that it travels to the device), then ``--variant before=/tmp/before/packages/dlinfer-maca/src
--devices maca,maca@before``. The summary's ratios are always the first ``--devices`` label against the second.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
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


def host_probe_ms(repeats: int = 5) -> float:
    """Median of ``repeats`` timings of a fixed host workload (Python calls + small CPU torch ops), in ms."""
    import torch

    x = torch.ones(8)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        acc = 0
        for i in range(20000):
            acc += len(str(i))
        for _ in range(2000):
            x = torch.add(x, 1.0).mul_(0.5)
        times.append((time.perf_counter() - t0) * 1e3)
    return round(statistics.median(times), 2)


def time_first_long(pipe, tokens: int) -> list[dict[str, float]]:  # type: ignore[no-untyped-def]
    """Two single requests of about ``tokens`` prompt tokens (different prompts), one new token each: latency and
    prompt length of each, in order."""
    import torch
    from lmdeploy import GenerationConfig

    one = GenerationConfig(max_new_tokens=1, do_sample=False, top_k=1, ignore_eos=True)
    out = []
    for seed in (101, 202):
        prompt = _prompts(1, tokens, seed=seed)[0]
        n_in = len(pipe.async_engine.tokenizer.encode(prompt))
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        pipe([prompt], gen_config=one, do_preprocess=False)
        torch.cuda.synchronize()
        out.append({"prompt_tokens": n_in, "s": round(time.perf_counter() - t0, 4)})
    return out


def run_one(model_dir: str, device: str, mode: str, block_size: int, streams: int = 1,
            first_long: int = 0) -> dict[str, object]:
    import torch
    from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline

    import dlinfer_lmdeploy  # noqa: F401
    from dlinfer_lmdeploy import graph_runner

    cfg = PytorchEngineConfig(
        device_type=device,
        eager_mode=(mode == "eager"),
        max_batch_size=NUM_PROMPTS,
        session_len=max(PROMPT_TOKENS + NEW_TOKENS, 2 * first_long) + 64,
        cache_max_entry_count=0.5,
        block_size=block_size,
    )
    probe_before = host_probe_ms()
    t0 = time.perf_counter()
    pipe = pipeline(model_dir, backend_config=cfg, log_level="ERROR")
    startup = time.perf_counter() - t0
    gen = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, top_k=1, ignore_eos=True)
    try:
        first = time_first_long(pipe, first_long) if first_long > 0 else []
        prompts = _prompts(NUM_PROMPTS, PROMPT_TOKENS)
        n_in = [len(pipe.async_engine.tokenizer.encode(p)) for p in prompts]
        pipe(prompts[:4], gen_config=GenerationConfig(max_new_tokens=16, ignore_eos=True), do_preprocess=False)
        # the timed batch's own shapes once (its 8192-token prefill, the batch-64 decode): kernels that pick a
        # launch setting by token count compile a variant at the first such step, on both device types
        pipe(prompts, gen_config=GenerationConfig(max_new_tokens=2, ignore_eos=True), do_preprocess=False)
        torch.cuda.synchronize()
        steps_before = graph_runner.step_counts()  # a silent eager decode in graph mode shows in the record
        t0 = time.perf_counter()
        outs = pipe(prompts, gen_config=gen, do_preprocess=False)
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        n_out = sum(len(o.token_ids) for o in outs)

        per_stream = []
        probes = []
        for k in range(streams):
            probe = host_probe_ms(3)
            stamps: list[float] = []
            count = 0
            prompt = _prompts(1, PROMPT_TOKENS, seed=1 + k)
            for out in pipe.stream_infer(prompt, gen_config=gen, do_preprocess=False):
                n = len(out.token_ids or [])
                if n:
                    stamps.append(time.perf_counter())
                    count += n
            if len(stamps) > 1:
                per_stream.append((stamps[-1] - stamps[0]) / max(count - 1, 1))
                probes.append(round((probe + host_probe_ms(3)) / 2, 2))
        tpot = statistics.median(per_stream) if per_stream else float("nan")
        first_tokens = [list(o.token_ids[:32]) for o in outs[:4]]
        steps = graph_runner.step_counts().since(steps_before).as_dict()
    finally:
        pipe.close()
    return {
        "device_type": device,
        "mode": mode,
        "block_size": block_size,
        "gpu": torch.cuda.get_device_name(0),
        "startup_s": round(startup, 2),
        "prefill_warmup_env": os.environ.get("DLINFER_PREFILL_WARMUP"),
        "first_long": first,
        "prompt_tokens_mean": sum(n_in) / len(n_in),
        "output_tokens": n_out,
        "throughput_s": round(elapsed, 3),
        "output_tok_per_s": round(n_out / elapsed, 1),
        "batch1_tokens": count,
        "batch1_ms_per_token": round(tpot * 1e3, 3),
        "batch1_streams_ms": [round(t * 1e3, 3) for t in per_stream],
        "batch1_streams_probe_ms": probes,
        "host_probe_ms": [probe_before, host_probe_ms()],
        "first_tokens": first_tokens,
        "dlinfer_graph_steps": steps,
    }


def build_model(model_dir: Path, shape: str = "1b", layers: int | None = None) -> Path:
    """Random bf16 weights on the GPU: the Llama-3.2-1B shape, or a full-width one of ``shapes.SHAPES``."""
    import torch

    from dlinfer_lmdeploy.testing import tiny_models

    if shape != "1b":
        from shapes import SHAPES, build

        return build(shape, layers or SHAPES[shape][2], model_dir.parent, "cuda")
    tiny_models.build_on_device(tiny_models.llama_3_2_1b_config(), model_dir, device="cuda", dtype=torch.bfloat16)
    torch.cuda.empty_cache()
    return model_dir


def parse_variants(specs: list[str]) -> dict[str, str]:
    """``["NAME=DIR", ...]`` -> ``{NAME: DIR}``; a DIR that does not exist is an error before any run starts."""
    variants: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--variant: expected NAME=DIR, got {spec!r}")
        if not Path(path).is_dir():
            raise SystemExit(f"--variant {name}: {path} is not a directory")
        variants[name] = str(Path(path).resolve())
    return variants


def child_launch(label: str, variants: dict[str, str], environ: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The device_type and environment of the child process for a run label (``maca``, ``cuda``, ``maca@NAME``)."""
    device, _, variant = label.partition("@")
    env = dict(environ)
    if variant:
        if variant not in variants:
            raise SystemExit(f"--devices {label}: no --variant {variant}=DIR given")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (variants[variant], environ.get("PYTHONPATH", "")) if p)
    return device, env


def _run_process(args: argparse.Namespace, label: str, mode: str) -> dict[str, object]:
    device, env = child_launch(label, args.variants, dict(os.environ))
    cmd = [sys.executable, __file__, "--one", device, mode, "--model-dir", str(args.model_dir)]
    cmd += ["--block-size", str(args.block_size), "--streams", str(args.streams), "--first-long", str(args.first_long)]
    t1 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"device_type": device, "label": label, "mode": mode, "error": f"timeout after {args.timeout}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-3000:]
        print(f"[{label}/{mode}] FAILED\n{tail}", file=sys.stderr)
        return {"device_type": device, "label": label, "mode": mode, "error": f"rc={proc.returncode}: {tail}"}
    res = json.loads(lines[-1][len("RESULT ") :])
    res["wall_s"] = round(time.perf_counter() - t1, 1)
    res["label"] = label
    print(
        f"[{label}/{mode}] {res['output_tok_per_s']} tok/s, {res['batch1_ms_per_token']} ms/token "
        f"(streams {res['batch1_streams_ms']}), host probe {res['host_probe_ms']} ms, {res['wall_s']} s"
        + (f", first long requests {res['first_long']}" if res.get("first_long") else ""),
        file=sys.stderr,
    )
    steps = res.get("dlinfer_graph_steps") or {}
    if mode == "graph" and steps.get("eager_decode"):
        print(f"[{label}/{mode}] WARNING: {steps['eager_decode']} decode steps ran eagerly in graph mode "
              f"({steps['eager']}): these figures are not graph-mode figures", file=sys.stderr)
    return res


def schedule(devices: list[str], rounds: int) -> list[str]:
    """Interleaved order: A B, B A, A B, ... so that a drift of the host over time hits both alike."""
    order: list[str] = []
    for r in range(rounds):
        order += devices if r % 2 == 0 else devices[::-1]
    return order


def _label(r: dict[str, object]) -> str:
    return str(r.get("label") or r["device_type"])


def summarize(results: list[dict[str, object]], modes: list[str], labels: tuple[str, str] = ("maca", "cuda")
              ) -> list[str]:
    """Markdown: one row per run, then per mode the medians over rounds and the ratio of medians, ``labels[0]``
    against ``labels[1]`` (the first two ``--devices`` labels)."""
    a_label, b_label = labels
    lines = [
        "| mode | run | output tok/s | batch-1 ms/token | host probe ms (before, after) |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['mode']} | {_label(r)} | error | | |")
            continue
        lines.append(
            f"| {r['mode']} | {_label(r)} | {r['output_tok_per_s']} | {r['batch1_ms_per_token']} "
            f"| {r['host_probe_ms'][0]}, {r['host_probe_ms'][1]} |"  # type: ignore[index]
        )
    lines += [
        "",
        "Per mode over all runs: throughput median and best; batch-1 ms/token over every stream of every run: "
        "median, minimum (host noise only adds time), and median of ms/token x (mean host probe / the stream's "
        f"probe), i.e. rescaled to the typical host speed. Ratios are {a_label} vs {b_label}, > 1 means "
        f"{a_label} is faster.",
        "",
        f"| mode | runs | tok/s median {a_label} / {b_label} (ratio) | tok/s best (ratio) | batch-1 ms median (ratio) "
        "| batch-1 ms min (ratio) | batch-1 ms host-rescaled (ratio) |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(x: dict[str, float], higher_better: bool) -> str:
        a, b = x[a_label], x[b_label]
        if higher_better:
            return f"{a:.1f} / {b:.1f} (**{a / b:.3f}**)"
        return f"{a:.2f} / {b:.2f} (**{b / a:.3f}**)"

    for mode in modes:
        ok = {d: [r for r in results if r["mode"] == mode and _label(r) == d and "error" not in r]
              for d in labels}  # fmt: skip
        if not ok[a_label] or not ok[b_label]:
            continue
        tps = {d: [float(r["output_tok_per_s"]) for r in ok[d]] for d in ok}  # type: ignore[arg-type]
        streams: dict[str, list[tuple[float, float]]] = {d: [] for d in ok}
        for d in ok:
            for r in ok[d]:
                pairs = zip(r["batch1_streams_ms"], r["batch1_streams_probe_ms"], strict=True)  # type: ignore[call-overload]
                streams[d] += [(float(t), float(p)) for t, p in pairs]
        typical = statistics.mean(p for d in ok for _, p in streams[d])
        ms_med = {d: statistics.median(t for t, _ in streams[d]) for d in ok}
        ms_min = {d: min(t for t, _ in streams[d]) for d in ok}
        ms_resc = {d: statistics.median(t * typical / p for t, p in streams[d]) for d in ok}
        tp_med = {d: statistics.median(tps[d]) for d in ok}
        tp_max = {d: max(tps[d]) for d in ok}
        lines.append(
            f"| {mode} | {len(ok[a_label])}, {len(ok[b_label])} | {cell(tp_med, True)} | {cell(tp_max, True)} "
            f"| {cell(ms_med, False)} | {cell(ms_min, False)} | {cell(ms_resc, False)} |"
        )
        a, b = ok[a_label][0], ok[b_label][0]
        same = sum(x == y for x, y in zip(a["first_tokens"], b["first_tokens"], strict=False))  # type: ignore[call-overload]
        lines.append(f"<!-- {mode}: first 32 tokens identical {a_label} vs {b_label} for {same}/4 prompts -->")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "llama-3.2-1b-rand")
    parser.add_argument("--shape", default="1b", help="1b (Llama-3.2-1B) or a name of bench/shapes.py")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: the real model's)")
    parser.add_argument("--devices", default="maca,cuda")
    parser.add_argument("--modes", default="eager,graph")
    parser.add_argument("--rounds", type=int, default=1, help="processes per (device_type, mode), interleaved")
    parser.add_argument("--streams", type=int, default=1, help="batch-1 streams per process (median reported)")
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--quant", choices=("awq", "w8a8"), default=None, help="serve it quantised (AWQ or W8A8)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--timeout", type=int, default=240, help="seconds per (device, mode) run")
    parser.add_argument("--first-long", type=int, default=0, metavar="N",
                        help="time two first requests of ~N prompt tokens, 1 new token, before anything else")
    parser.add_argument("--budget", type=float, default=0, metavar="S",
                        help="seconds for the whole run: a process that would not finish in what is left (judged by "
                             "the longest finished one) is not started, and the summary covers the runs done")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=DIR",
                        help="run label maca@NAME: maca with DIR first on PYTHONPATH (see the module docstring)")
    parser.add_argument("--one", nargs=2, metavar=("DEVICE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.variants = parse_variants(args.variant)

    if args.one:
        res = run_one(str(args.model_dir), args.one[0], args.one[1], args.block_size, args.streams, args.first_long)
        print("RESULT " + json.dumps(res))
        return 0

    t0 = time.perf_counter()
    args.model_dir = build_model(args.model_dir, args.shape, args.layers)
    if args.quant:
        from dlinfer_lmdeploy.testing import tiny_quant

        quantised = args.model_dir.with_name(f"{args.model_dir.name}-{args.quant}")
        if not (quantised / "config.json").exists():
            tiny_quant.quantise_checkpoint(args.model_dir, quantised, args.quant, group_size=128, device="cuda")
        args.model_dir = quantised
    print(f"model ready in {time.perf_counter() - t0:.1f}s at {args.model_dir}", file=sys.stderr)
    modes = args.modes.split(",")
    labels = args.devices.split(",")
    for label in labels:
        child_launch(label, args.variants, {})  # an unknown variant fails before the first run
    results: list[dict[str, object]] = []
    longest = 0.0
    skipped: list[str] = []
    for mode in modes:
        for device in schedule(labels, args.rounds):
            left = args.budget - (time.perf_counter() - t0) if args.budget else math.inf
            if left < max(longest, 1.0):
                skipped.append(f"{device}/{mode}")
                continue
            started = time.perf_counter()
            results.append({**_run_process(args, device, mode), "shape": args.shape, "layers": args.layers,
                            "quant": args.quant})
            longest = max(longest, time.perf_counter() - started)
            if args.out:  # partial results survive a time limit
                args.out.write_text(json.dumps(results, indent=2))
    if skipped:
        print(f"--budget {args.budget:.0f} s: not started: {', '.join(skipped)}", file=sys.stderr)
    print("\n".join(summarize(results, modes, (labels[0], labels[1]) if len(labels) > 1 else (labels[0], labels[0]))))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
