"""Tensor-parallel LMDeploy on N NVIDIA GPUs: dlinfer (maca plugin) against LMDeploy's own CUDA backend.

    python packages/dlinfer-lmdeploy/bench/lmdeploy_tp_gpu.py --tp 2 --models mixtral_8x7b,qwen2_57b_a14b --out tp2.json
    python packages/dlinfer-lmdeploy/bench/lmdeploy_tp_gpu.py --tp 4 --models qwen2_57b_a14b,llama3_70b --out tp4.json
    python packages/dlinfer-lmdeploy/bench/lmdeploy_tp_gpu.py --dry-run --tp 2  # CPU: tiny widths, cpu device

Random bf16 models of the real shapes (full width; ``--layers`` cuts the depth to fit disk and time, the JSON says
how many) are built locally on GPU 0. Then, per model and per device_type (``maca``, ``cuda``), each run in its own
process under a deadline (``testing.child``: stacks of every rank on timeout, NVLink multicast off), graph mode:

* throughput: 64 prompts of 128 tokens, 256 new tokens each, ignore_eos, greedy -> output tok/s;
* batch 1: one 128-token prompt, 256 new tokens, streamed -> mean ms per output token (first token excluded);
* all-reduce share of decode: LMDeploy's own torch profiler (``LMDEPLOY_PROFILE_CUDA``) runs in every rank from
  ``--profile-delay`` s after the engine loop starts, for ``--profile-window`` s while the child streams batch-1
  requests only; from rank 0's trace: GPU time of all-reduce kernels (NCCL ``AllReduce``, custom all-reduce) over
  the GPU time of all kernels in the window (the 128-token prefill of each streamed request is in it too).
  ``--profile-batch N`` generates N requests at a time through the window instead and reports, per decode step
  (the window's span over the batches' mean step time, prefill included in that mean), each kernel kind's GPU time
  and the GPU's idle time. In graph mode the trace also gives them exactly (``graph_steps``): one ``cudaGraphLaunch``
  per decode step, the kernels carrying its correlation id, and the medians of the period between consecutive
  replays, of the engine's eager kernels between them (sampling, input copies) and of the idle rest; the eager
  kernels (prefill included) are summed apart.

``--tp-compare 1`` also runs the same model at tp=1 where it fits one GPU. LMDeploy's cuda runs on its mp executor
(``--peer-executor``; ray where installed) and its child exits after printing its figures without closing the engine
(``DLINFER_HARD_EXIT``: its mp release can hang on workers kept alive by Inductor compile workers).
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lmdeploy_e2e_gpu import NEW_TOKENS, NUM_PROMPTS, PROMPT_TOKENS, _prompts  # noqa: E402
from shapes import SHAPES, build  # noqa: E402

ALL_REDUCE = re.compile(r"allreduce|all_reduce|cross_device_reduce|reduce_scatter|allgather|multimem", re.I)
GRAPH_LAUNCH = re.compile(r"cu(da)?GraphLaunch")
"""Runtime / driver API calls that replay a device graph (CUPTI names may carry a version suffix)."""
KERNEL_KINDS = (  # first match wins: where the GPU time of a decode window goes
    ("all-reduce", ALL_REDUCE),
    # LMDeploy's paged decode kernels are _fwd_grouped_split(_quant)_kernel + _reduce_split_kernel
    ("attention", re.compile(r"decode|attn|attention|flash|fwd_grouped_split|reduce_split", re.I)),
    ("moe", re.compile(r"moe|expert|fused_moe|grouped", re.I)),
    ("gemm", re.compile(r"gemm|gemv|cutlass|xmma|nvjet|matmul|splitk", re.I)),
    ("norm", re.compile(r"rms|norm", re.I)),
    ("rotary", re.compile(r"rotary|rope", re.I)),
    ("kv-fill", re.compile(r"fill_kv|kv_cache|cache", re.I)),
    ("activation", re.compile(r"silu|gelu|act", re.I)),
)


def _engine(model: str, device: str, tp: int, executor: str | None, dry: bool) -> Any:
    from lmdeploy import PytorchEngineConfig, pipeline

    import dlinfer_lmdeploy  # noqa: F401

    cfg = PytorchEngineConfig(
        device_type=device, tp=tp, eager_mode=False, max_batch_size=8 if dry else NUM_PROMPTS,
        session_len=PROMPT_TOKENS + NEW_TOKENS + 64, cache_max_entry_count=0.2 if dry else 0.5,
        block_size=16 if dry else 64, distributed_executor_backend=executor if tp > 1 else None,
        dtype="float32" if dry else "auto",
    )
    return pipeline(model, backend_config=cfg, log_level="ERROR")


def _stream_ms(pipe: Any, gen: Any, seed: int) -> tuple[float, int]:
    stamps: list[float] = []
    count = 0
    for out in pipe.stream_infer(_prompts(1, PROMPT_TOKENS, seed=seed), gen_config=gen, do_preprocess=False):
        n = len(out.token_ids or [])
        if n:
            stamps.append(time.perf_counter())
            count += n
    return ((stamps[-1] - stamps[0]) / max(count - 1, 1) * 1e3 if len(stamps) > 1 else float("nan")), count


def _batch_window(pipe: Any, gen: Any, batch: int, until: float) -> dict[str, Any]:
    """Generate ``batch`` prompts at a time until ``until`` (perf_counter): the profiled window then holds decode
    steps of that batch size (and each batch's prefill, ``batch x PROMPT_TOKENS`` tokens). Returns the mean step
    time over the batches, whole generation time / new tokens per request (the prefill included)."""
    steps_ms: list[float] = []
    seed = 3
    while time.perf_counter() < until:
        t0 = time.perf_counter()
        outs = pipe(_prompts(batch, PROMPT_TOKENS, seed=seed), gen_config=gen, do_preprocess=False)
        per_request = max(len(o.token_ids) for o in outs)
        steps_ms.append((time.perf_counter() - t0) / max(per_request, 1) * 1e3)
        seed += 1
    return {"batch": batch, "batches": len(steps_ms), "mean_step_ms": round(sum(steps_ms) / len(steps_ms), 3)
            if steps_ms else None}


def run_one(model: str, device: str, tp: int, executor: str | None, profile: str | None, dry: bool) -> dict[str, Any]:
    """In the child: build the engine, measure, print RESULT (``testing.child.emit``)."""
    from lmdeploy import GenerationConfig

    from dlinfer_lmdeploy.testing.child import emit

    n_prompts, n_new = (4, 8) if dry else (NUM_PROMPTS, NEW_TOKENS)
    t0 = time.perf_counter()
    pipe = _engine(model, device, tp, executor, dry)
    loop_start = time.perf_counter()
    res: dict[str, Any] = {"device_type": device, "tp": tp, "executor": executor,
                           "startup_s": round(loop_start - t0, 1)}
    gen = GenerationConfig(max_new_tokens=n_new, do_sample=False, top_k=1, ignore_eos=True)
    pipe(_prompts(2, 16), gen_config=GenerationConfig(max_new_tokens=4, ignore_eos=True), do_preprocess=False)
    from dlinfer_lmdeploy import graph_runner  # counts this process's steps: tp=1 (at tp>1 the workers run them)

    before = graph_runner.step_counts()
    if profile is None:
        prompts = _prompts(n_prompts, PROMPT_TOKENS)
        t1 = time.perf_counter()
        outs = pipe(prompts, gen_config=gen, do_preprocess=False)
        elapsed = time.perf_counter() - t1
        n_out = sum(len(o.token_ids) for o in outs)
        ms, count = _stream_ms(pipe, gen, seed=1)
        res.update(output_tokens=n_out, throughput_s=round(elapsed, 3), output_tok_per_s=round(n_out / elapsed, 1),
                   batch1_ms_per_token=round(ms, 3), batch1_tokens=count,
                   first_tokens=[list(o.token_ids[:32]) for o in outs[:4]],
                   dlinfer_graph_steps=graph_runner.step_counts().since(before).as_dict())
    else:  # batch-1 streams (or batches of --profile-batch) through the profiler's window (every rank's trace)
        delay, window, batch = (float(x) for x in (profile.split(",") + ["1"])[:3])
        if batch > 1:
            res["profile_batch"] = _batch_window(pipe, gen, int(batch), loop_start + delay + window + 2)
        while time.perf_counter() - loop_start < delay + window + 2:
            _stream_ms(pipe, gen, seed=2)
        prefix = os.environ["LMDEPLOY_PROFILE_OUT_PREFIX"]
        deadline = time.perf_counter() + 120
        while not glob.glob(f"{prefix}0.json*") and time.perf_counter() < deadline:
            time.sleep(1)
        time.sleep(5)  # the dump of a large trace may still be written
        res["allreduce"] = allreduce_share(prefix)
        res.update(per_step_us(res["allreduce"], res.get("profile_batch")))
    emit(res)
    pipe.close()
    return res


def per_step_us(trace: dict[str, Any], batch: dict[str, Any] | None) -> dict[str, Any]:
    """With batches through the window: decode steps in it (the window's span / the batches' mean step time) and
    each kernel kind's GPU time per step, plus the GPU-idle time per step (span - busy). Approximate: the mean step
    time comes from whole generations, the profiler's start and trace export included, and the window holds each
    batch's prefill; ``per_step_source`` says so. In graph mode the trace's ``graph_steps`` figures are exact."""
    step_ms = (batch or {}).get("mean_step_ms")
    span = trace.get("window_span_us")
    if not step_ms or not span:
        return {}
    steps = span / (step_ms * 1e3)
    by_kind = {k: round(v / steps, 1) for k, v in trace.get("kernel_us_by_kind", {}).items()}
    idle = (span - trace.get("kernel_us", 0.0)) / steps
    return {"steps_in_window": round(steps, 1), "kernel_us_per_step_by_kind": by_kind,
            "gpu_idle_us_per_step": round(idle, 1),
            "per_step_source": "approximate: window span / mean step time of whole generations (prefill and "
                               "profiler start/export included); see graph_steps for exact graph-mode figures"}


def kernel_kind(name: str) -> str:
    return next((k for k, pat in KERNEL_KINDS if pat.search(name)), "other")


def _median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return (v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2) if n else float("nan")


FORWARD_KINDS = frozenset({"gemm", "attention", "moe"})
"""Kernel kinds of a model forward."""
ENGINE_FORWARD_KERNELS = 4
"""At most this many forward-kind kernels run eagerly between two graph replays as the engine's own per-step work
(LMDeploy 0.18 runs the LM head outside the graph, ``ModelAgent.get_logits``: one GEMM, or a split-K pair); more
mean an eager step (a prefill: every layer's GEMMs and attention) ran between them."""


GRAPH_TOP_NAMES = 16
"""Kernel names listed per graph step (the largest GPU time first), e.g. a decode kernel apart from its merge."""
GRAPH_NAME_CHARS = 120
"""Kernel names are cut to this many characters (CUTLASS / cuBLAS names run to hundreds)."""


def graph_steps(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Decode steps of a trace counted exactly: each ``cudaGraphLaunch`` is one graph-mode decode step, and the kernels
    that carry its correlation id ran inside it. Per replay: busy = its kernels' GPU time, period = its first kernel's
    start to the next replay's. Between two replays the engine launches eager kernels of its own (the LM head,
    sampling, the next step's input copies): their time is ``between``, and idle = period - busy - between. A period
    with more than :data:`ENGINE_FORWARD_KERNELS` eager forward kernels between its replays (a prefill) is left out of
    the medians. ``graph_kernels_per_step_by_name``: the replays' kernels by name, GPU µs and launches per step.
    Returns {} for a trace without graph launches (eager mode)."""
    launches = {e["args"]["correlation"] for e in events if e.get("cat") in ("cuda_runtime", "cuda_driver")
                and GRAPH_LAUNCH.match(e.get("name", "")) and "correlation" in e.get("args", {})}
    if not launches:
        return {}
    replays: dict[int, list[dict[str, Any]]] = {}
    eager: list[tuple[float, float, bool]] = []  # (start, duration, a forward kernel)
    eager_by_kind: dict[str, float] = {}
    for e in events:
        if e.get("cat") != "kernel" or "dur" not in e:
            continue
        corr = e.get("args", {}).get("correlation")
        if corr in launches:
            replays.setdefault(corr, []).append(e)
        else:
            kind = kernel_kind(e.get("name", ""))
            eager.append((e["ts"], e["dur"], kind in FORWARD_KINDS))
            eager_by_kind[kind] = eager_by_kind.get(kind, 0.0) + e["dur"]
    steps = sorted(((min(k["ts"] for k in ks), sum(k["dur"] for k in ks), ks) for ks in replays.values()),
                   key=lambda r: r[0])
    if not steps:
        return {}
    eager.sort()
    by_kind: dict[str, float] = {}
    by_name: dict[str, list[float]] = {}  # name -> [GPU time, launches]
    for _, _, ks in steps:
        for k in ks:
            name = k.get("name", "")
            kind = kernel_kind(name)
            by_kind[kind] = by_kind.get(kind, 0.0) + k["dur"]
            acc = by_name.setdefault(name[:GRAPH_NAME_CHARS], [0.0, 0])
            acc[0] += k["dur"]
            acc[1] += 1
    periods, idles, betweens = [], [], []
    j = 0
    for (start, busy, _), (nxt, _, _) in zip(steps[:-1], steps[1:], strict=True):
        while j < len(eager) and eager[j][0] < start:
            j += 1
        inside = []
        while j < len(eager) and eager[j][0] < nxt:
            inside.append(eager[j])
            j += 1
        if sum(forward for _, _, forward in inside) > ENGINE_FORWARD_KERNELS:
            continue  # an eager step (prefill) ran between these replays
        between = sum(dur for _, dur, _ in inside)
        periods.append(nxt - start)
        betweens.append(between)
        idles.append(nxt - start - busy - between)
    n = len(steps)
    eager_sorted = dict(sorted(eager_by_kind.items(), key=lambda kv: -kv[1]))
    return {"graph_steps": n, "graph_kernel_us_per_step_by_kind":
            {k: round(v / n, 1) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
            "graph_busy_us_per_step": round(sum(b for _, b, _ in steps) / n, 1),
            "graph_step_period_us_median": round(_median(periods), 1) if periods else None,
            "graph_step_between_us_median": round(_median(betweens), 1) if betweens else None,
            "graph_step_idle_us_median": round(_median(idles), 1) if idles else None,
            "consecutive_replays": len(periods),
            "graph_kernels_per_step_by_name": {
                name: {"us": round(t / n, 1), "launches": round(c / n, 2)}
                for name, (t, c) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:GRAPH_TOP_NAMES]},
            "eager_kernel_us_by_kind": {k: round(v, 1) for k, v in eager_sorted.items()}}


def allreduce_share(prefix: str) -> dict[str, Any]:
    """From rank 0's Chrome trace: GPU time of all-reduce kernels / GPU time of all kernels (and the top kernels)."""
    files = sorted(glob.glob(f"{prefix}0.json*"))
    if not files:
        return {"error": f"no trace {prefix}0.json*"}
    opener = gzip.open if files[0].endswith(".gz") else open
    with opener(files[0], "rt") as f:
        trace = json.load(f)
    events = trace.get("traceEvents", [])
    kernels = [e for e in events if e.get("cat") == "kernel" and "dur" in e]
    total = sum(e["dur"] for e in kernels)
    span = (max(e["ts"] + e["dur"] for e in kernels) - min(e["ts"] for e in kernels)) if kernels else 0.0
    by_kind: dict[str, float] = {}
    for e in kernels:
        kind = kernel_kind(e.get("name", ""))
        by_kind[kind] = by_kind.get(kind, 0.0) + e["dur"]
    ar = [e for e in kernels if ALL_REDUCE.search(e.get("name", ""))]
    ar_us = sum(e["dur"] for e in ar)
    by_name: dict[str, float] = {}
    for e in ar:
        by_name[e["name"][:80]] = by_name.get(e["name"][:80], 0.0) + e["dur"]
    return {"kernels": len(kernels), "kernel_us": round(total, 1), "allreduce_kernels": len(ar),
            "allreduce_us": round(ar_us, 1), "allreduce_share": round(ar_us / total, 4) if total else None,
            "allreduce_by_name_us": dict(sorted(by_name.items(), key=lambda kv: -kv[1])[:5]),
            "window_span_us": round(span, 1), "gpu_busy_share": round(total / span, 4) if span else None,
            "kernel_us_by_kind": {k: round(v, 1) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
            "trace": files[0], **graph_steps(events)}


def _child(args: argparse.Namespace, model: Path, device: str, tp: int, profile_dir: Path | None,
           batch: int = 1) -> dict[str, Any]:
    from dlinfer_lmdeploy.testing import child

    here = str(Path(__file__).resolve().parent)  # the child runs this file as a module
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    executor = args.peer_executor if device == "cuda" else args.executor
    if device == "cuda":
        env[child.HARD_EXIT_ENV] = "1"
    argv = ["--one", device, str(tp), "--model-dir", str(model), "--executor", str(executor)]
    if args.dry_run:
        argv.append("--dry-run")
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
        activity = "LMDEPLOY_PROFILE_CPU" if args.dry_run else "LMDEPLOY_PROFILE_CUDA"  # dry run: the plumbing only
        env.update({activity: "1"}, LMDEPLOY_PROFILE_DELAY=str(int(args.profile_delay)),
                   LMDEPLOY_PROFILE_DURATION=str(int(args.profile_window)),
                   LMDEPLOY_PROFILE_OUT_PREFIX=str(profile_dir / f"{device}_tp{tp}_b{batch}_rank"))
        argv += ["--profile", f"{args.profile_delay},{args.profile_window},{batch}"]
    what = f"{model.name} {device} tp={tp}{f' profile b{batch}' if profile_dir else ''}"
    t0 = time.perf_counter()
    try:
        res = child.run_module("lmdeploy_tp_gpu", argv, deadline_s=args.timeout, env=env, what=what)
    except (child.GenerationTimeout, RuntimeError) as exc:
        print(f"[{what}] FAILED\n{str(exc)[-4000:]}", file=sys.stderr)
        return {"model": model.name, "device_type": device, "tp": tp, "error": str(exc)[-4000:]}
    res.update(model=model.name, wall_s=round(time.perf_counter() - t0, 1))
    print(f"[{what}] {json.dumps({k: v for k, v in res.items() if k != 'first_tokens'})}", file=sys.stderr)
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--tp-compare", default="", help="comma list of other tp sizes to run (e.g. 1)")
    parser.add_argument("--models", default="mixtral_8x7b,qwen2_57b_a14b")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers of each model (real: 32/28/80)")
    parser.add_argument("--devices", default="maca,cuda")
    parser.add_argument("--executor", default="mp", help="dlinfer's executor at tp>1 (mp or ray)")
    parser.add_argument("--peer-executor", default="mp", help="LMDeploy cuda's executor at tp>1")
    parser.add_argument("--model-root", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "tp-bench")
    parser.add_argument("--profile-delay", type=float, default=20.0)
    parser.add_argument("--profile-window", type=float, default=4.0)
    parser.add_argument("--profile-batch", default="1",
                        help="requests generated together through the profiled window (1: batch-1 streams); a "
                             "comma list gives one profiled child per batch size after one unprofiled child")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--profile-tp1", action="store_true", help="also profile tp=1 runs (kernel time by kind)")
    parser.add_argument("--cleanup", action="store_true", help="delete each model after its runs (disk)")
    parser.add_argument("--timeout", type=int, default=420, help="seconds per child")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--dry-run", action="store_true", help="CPU: tiny widths, cpu device, fp32, 2 layers")
    parser.add_argument("--one", nargs=2, metavar=("DEVICE", "TP"), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--profile", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        executor = None if args.executor == "None" else args.executor
        run_one(str(args.model_dir), args.one[0], int(args.one[1]), executor, args.profile, args.dry_run)
        return 0
    if args.dry_run:  # the profile runs with CPU activity only: it checks the trace plumbing (no kernels, no share)
        args.devices, args.layers = "cpu", 2
        args.profile_delay, args.profile_window = min(args.profile_delay, 6.0), min(args.profile_window, 2.0)
    results: list[dict[str, Any]] = []
    sizes = [args.tp] + [int(x) for x in args.tp_compare.split(",") if x]
    for name in args.models.split(","):
        t0 = time.perf_counter()
        model = build(name, args.layers, args.model_root, "cpu" if args.dry_run else "cuda", tiny=args.dry_run)
        print(f"{name}: {args.layers} of {SHAPES[name][2]} layers at {model} in {time.perf_counter() - t0:.0f}s",
              file=sys.stderr)
        for tp in sizes:
            for device in args.devices.split(","):
                results.append(_child(args, model, device, tp, None))
                if not args.no_profile and (tp > 1 or args.profile_tp1):
                    batches = [int(b) for b in str(args.profile_batch).split(",")]
                    for i, b in enumerate(batches):
                        prof = _child(args, model, device, tp, args.model_root / "profiles" / model.name, b)
                        trace = prof.get("allreduce", {"error": prof.get("error")})
                        if i == 0:
                            results[-1]["allreduce"] = trace
                        if len(batches) > 1:
                            results[-1].setdefault("allreduce_by_batch", {})[str(b)] = trace
                results[-1]["layers"] = args.layers
                if args.out:  # partial results survive a time limit
                    args.out.write_text(json.dumps(results, indent=2))
        if args.cleanup:  # the next model needs the disk
            import shutil

            shutil.rmtree(model, ignore_errors=True)
    print("| model | tp | device_type | output tok/s | batch-1 ms/token | all-reduce share of decode GPU time |")
    print("|---|---|---|---|---|---|")
    for r in results:
        share = (r.get("allreduce") or {}).get("allreduce_share")
        print(f"| {r['model']} ({args.layers} layers) | {r['tp']} | {r['device_type']} | "
              f"{r.get('output_tok_per_s', 'error')} | {r.get('batch1_ms_per_token', '')} | {share} |")
    return 0 if all("error" not in r and "error" not in (r.get("allreduce") or {}) for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
