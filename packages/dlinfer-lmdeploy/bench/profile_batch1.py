"""Profile LMDeploy eager batch-1 decode: dlinfer (maca plugin) against LMDeploy's own cuda backend.

    python packages/dlinfer-lmdeploy/bench/profile_batch1.py --out $OUT

Builds the same Llama-3.2-1B-shaped model as ``lmdeploy_e2e_gpu.py``; then, per device_type (each in its
own process), replays the benchmark's sequence (warm-up, 64-prompt throughput run, batch-1 stream) and
runs two more batch-1 streams:

* per output token: stamps of the stream (mean / median / max gap), Triton compiles (with the phase
  and seconds they took);
* per decode forward (``model_forward`` of LMDeploy's model agent): host time of the whole call, of the
  model's ``forward`` alone and its GPU time (CUDA events), and the period between steps;
* torch.profiler over 20 decode steps (CPU ops of the engine thread, CUDA kernels, runtime API calls):
  kernels and launches per step, top CPU ops; cProfile over 20 further decode steps (Python hot spots).

Writes ``<device>_summary.json``, ``<device>_profile.txt`` and a short table to stdout.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lmdeploy_e2e_gpu import NEW_TOKENS, NUM_PROMPTS, PROMPT_TOKENS, _prompts, build_model  # noqa: E402

PROF_STEPS = (30, 50)  # decode forwards [30, 50) of the profiled stream under torch.profiler
CPROF_STEPS = (80, 100)  # and [80, 100) under cProfile


class Recorder:
    def __init__(self) -> None:
        self.phase = "init"
        self.compiles: list[dict[str, object]] = []
        self.forwards: list[dict[str, object]] = []  # model_forward calls
        self.inner: list[dict[str, object]] = []  # model.forward calls (with CUDA events)
        self.decode_index = 0
        self.torch_prof = None
        self.cprof = None
        self.prof_text = ""
        self.cprof_text = ""


REC = Recorder()


def _instrument(out_dir: Path, device: str) -> None:
    import torch
    import triton.runtime.jit as tjit
    from lmdeploy.pytorch.engine.model_agent import agent
    from lmdeploy.pytorch.models import llama

    orig_compile = tjit.JITFunction._do_compile

    def _do_compile(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return orig_compile(self, *args, **kwargs)
        finally:
            REC.compiles.append(
                {"phase": REC.phase, "kernel": getattr(self, "__name__", "?"), "s": round(time.perf_counter() - t0, 4)}
            )

    tjit.JITFunction._do_compile = _do_compile

    orig_mf = agent.model_forward

    def model_forward(model, inputs, *args, **kwargs):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        out = orig_mf(model, inputs, *args, **kwargs)
        REC.forwards.append(
            {
                "phase": REC.phase,
                "decoding": bool(getattr(inputs, "is_decoding", False)),
                "batch": int(inputs.seq_length.numel()),
                "t0": t0,
                "host_s": time.perf_counter() - t0,
            }
        )
        return out

    agent.model_forward = model_forward

    orig_fwd = llama.LlamaForCausalLM.forward

    def forward(self, input_ids, *args, **kwargs):  # type: ignore[no-untyped-def]
        decoding = input_ids.numel() <= 1
        if REC.phase == "b1_prof" and decoding:
            i = REC.decode_index
            if i == PROF_STEPS[0]:
                from torch.profiler import ProfilerActivity, profile

                REC.torch_prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
                REC.torch_prof.__enter__()
            elif i == PROF_STEPS[1] and REC.torch_prof is not None:
                torch.cuda.synchronize()
                REC.torch_prof.__exit__(None, None, None)
                _summarise_torch_prof(REC.torch_prof, PROF_STEPS[1] - PROF_STEPS[0], out_dir, device)
                REC.torch_prof = None
            elif i == CPROF_STEPS[0]:
                REC.cprof = cProfile.Profile()
                REC.cprof.enable()
            elif i == CPROF_STEPS[1] and REC.cprof is not None:
                REC.cprof.disable()
                s = io.StringIO()
                st = pstats.Stats(REC.cprof, stream=s)
                st.sort_stats("tottime").print_stats(45)
                st.sort_stats("cumulative").print_stats(70)
                REC.cprof_text = s.getvalue()
                REC.cprof = None
            REC.decode_index += 1
        ev0 = torch.cuda.Event(enable_timing=True)
        ev1 = torch.cuda.Event(enable_timing=True)
        ev0.record()
        t0 = time.perf_counter()
        out = orig_fwd(self, input_ids, *args, **kwargs)
        host = time.perf_counter() - t0
        ev1.record()
        REC.inner.append({"phase": REC.phase, "decoding": decoding, "host_s": host, "ev": (ev0, ev1)})
        return out

    llama.LlamaForCausalLM.forward = forward


def _summarise_torch_prof(prof, steps: int, out_dir: Path, device: str) -> None:  # type: ignore[no-untyped-def]
    from collections import Counter

    events = prof.events()
    kernels: Counter[str] = Counter()
    kernel_us: Counter[str] = Counter()
    api: Counter[str] = Counter()
    api_us: Counter[str] = Counter()
    for e in events:
        dev = str(getattr(e, "device_type", ""))
        if "CUDA" in dev:
            kernels[e.name[:90]] += 1
            kernel_us[e.name[:90]] += e.device_time_total if hasattr(e, "device_time_total") else 0
        elif e.name.startswith(("cuda", "cu")) and not e.name.startswith("cudnn"):
            api[e.name] += 1
            api_us[e.name] += e.cpu_time_total
    lines = [f"=== {device}: torch.profiler over {steps} decode steps (batch 1) ==="]
    lines.append(f"device events per step: {sum(kernels.values()) / steps:.1f}")
    lines.append("-- device events (count per step, total us per step)")
    for name, n in kernels.most_common(40):
        lines.append(f"{n / steps:8.2f} {kernel_us[name] / steps:9.1f}  {name}")
    lines.append("-- runtime / driver API calls (count per step, host us per step)")
    for name, n in api.most_common(25):
        lines.append(f"{n / steps:8.2f} {api_us[name] / steps:9.1f}  {name}")
    ka = prof.key_averages()
    lines.append("-- CPU ops by self CPU time (all steps)")
    lines.append(ka.table(sort_by="self_cpu_time_total", row_limit=45, max_name_column_width=70))
    REC.prof_text = "\n".join(lines)
    try:
        prof.export_chrome_trace(str(out_dir / f"{device}_trace.json"))
    except Exception as exc:  # noqa: BLE001
        REC.prof_text += f"\n(trace export failed: {exc})"


def _stream_b1(pipe, gen, seed: int) -> dict[str, object]:  # type: ignore[no-untyped-def]
    stamps: list[float] = []
    count = 0
    for out in pipe.stream_infer(_prompts(1, PROMPT_TOKENS, seed=seed), gen_config=gen, do_preprocess=False):
        k = len(out.token_ids or [])
        if k:
            stamps.append(time.perf_counter())
            count += k
    gaps = [(b - a) * 1e3 for a, b in zip(stamps, stamps[1:], strict=False)]
    top = sorted(range(len(gaps)), key=lambda i: -gaps[i])[:6]
    return {
        "tokens": count,
        "ms_per_token": round((stamps[-1] - stamps[0]) * 1e3 / max(count - 1, 1), 3),
        "gap_median_ms": round(statistics.median(gaps), 3),
        "gap_p90_ms": round(sorted(gaps)[int(0.9 * len(gaps))], 3),
        "gap_max": [(i, round(gaps[i], 2)) for i in top],
    }


def _per_step(phase: str) -> dict[str, float]:
    fw = [f for f in REC.forwards if f["phase"] == phase and f["decoding"]]
    inner = [f for f in REC.inner if f["phase"] == phase and f["decoding"]]
    periods = [(b["t0"] - a["t0"]) * 1e3 for a, b in zip(fw, fw[1:], strict=False)]
    gpu = [i["ev"][0].elapsed_time(i["ev"][1]) for i in inner]
    med = statistics.median
    return {
        "decode_steps": len(fw),
        "step_period_ms_median": round(med(periods), 3) if periods else float("nan"),
        "model_forward_host_ms_median": round(med([f["host_s"] * 1e3 for f in fw]), 3) if fw else float("nan"),
        "model_fwd_only_host_ms_median": round(med([i["host_s"] * 1e3 for i in inner]), 3) if inner else float("nan"),
        "model_fwd_gpu_ms_median": round(med(gpu), 3) if gpu else float("nan"),
    }


def _op_microbench() -> dict[str, float]:
    """Host microseconds per dlinfer op call at batch-1 decode shapes (no sync inside the loop)."""
    import torch
    from dlinfer import ops

    dev, dt = "cuda", torch.bfloat16
    H, Hq, Hkv, D, inter = 2048, 32, 8, 64, 8192
    x = torch.randn(1, H, device=dev, dtype=dt)
    w = torch.randn(H, device=dev, dtype=dt)
    qkv = torch.randn(1, (Hq + 2 * Hkv) * D, device=dev, dtype=dt)
    q = qkv[:, : Hq * D].view(1, Hq, D)
    k = qkv[:, Hq * D : (Hq + Hkv) * D].view(1, Hkv, D)
    v = qkv[:, (Hq + Hkv) * D :].view(1, Hkv, D)
    cos = torch.randn(1, D, device=dev, dtype=dt)
    sin = torch.randn(1, D, device=dev, dtype=dt)
    bs, nblocks = 64, 64
    kc = torch.randn(nblocks, bs, Hkv, D, device=dev, dtype=dt)
    vc = torch.randn(nblocks, bs, Hkv, D, device=dev, dtype=dt)
    bt = torch.arange(8, device=dev, dtype=torch.int32)[None]
    seqlens = torch.tensor([300], device=dev, dtype=torch.int32)
    slot = torch.tensor([299], device=dev, dtype=torch.int64)
    gu = torch.randn(1, 2 * inter, device=dev, dtype=dt)
    wq = torch.randn(H, H, device=dev, dtype=dt)
    cases = {
        "rms_norm": lambda: ops.rms_norm(x, w, eps=1e-5),
        "add_rms_norm": lambda: ops.add_rms_norm(x, x, w, eps=1e-5),
        "apply_rotary_pos_emb": lambda: ops.apply_rotary_pos_emb(q, k, cos, sin),
        "fill_kv_cache": lambda: ops.fill_kv_cache(k, v, kc, vc, slot, kv_layout="NHD"),
        "paged_decode_attention(ctx300)": lambda: ops.paged_decode_attention(
            q, kc, vc, bt, seqlens, max_seqlen_kv=300, kv_layout="NHD"
        ),
        "silu_and_mul": lambda: ops.silu_and_mul(gu),
        "linear(2048x2048)": lambda: ops.linear(x, wq),
        "torch.empty(1x2048)": lambda: torch.empty((1, H), device=dev, dtype=dt),
        "tensor.copy_(1x32x64)": lambda: q.copy_(q),
    }
    res: dict[str, float] = {}
    for name, fn in cases.items():
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        n = 300
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        host = (time.perf_counter() - t0) / n * 1e6
        torch.cuda.synchronize()
        res[name] = round(host, 2)
    return res


def run_one(model_dir: str, device: str, block_size: int, out_dir: Path) -> dict[str, object]:
    import torch
    from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline

    import dlinfer_lmdeploy  # noqa: F401

    _instrument(out_dir, device)
    cfg = PytorchEngineConfig(
        device_type=device,
        eager_mode=True,
        max_batch_size=NUM_PROMPTS,
        session_len=PROMPT_TOKENS + NEW_TOKENS + 64,
        cache_max_entry_count=0.5,
        block_size=block_size,
    )
    REC.phase = "startup"
    pipe = pipeline(model_dir, backend_config=cfg, log_level="ERROR")
    gen = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, top_k=1, ignore_eos=True)
    result: dict[str, object] = {"device_type": device, "gpu": torch.cuda.get_device_name(0)}
    try:
        prompts = _prompts(NUM_PROMPTS, PROMPT_TOKENS)
        REC.phase = "warmup"
        pipe(prompts[:4], gen_config=GenerationConfig(max_new_tokens=16, ignore_eos=True), do_preprocess=False)
        REC.phase = "throughput"
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        outs = pipe(prompts, gen_config=gen, do_preprocess=False)
        torch.cuda.synchronize()
        n_out = sum(len(o.token_ids) for o in outs)
        result["throughput_tok_s"] = round(n_out / (time.perf_counter() - t0), 1)
        for phase, seed in (("b1_first", 1), ("b1_second", 2), ("b1_prof", 3)):
            REC.phase = phase
            result[phase] = _stream_b1(pipe, gen, seed)
            torch.cuda.synchronize()
            result[phase]["steps"] = _per_step(phase)  # type: ignore[index]
    finally:
        REC.phase = "close"
        pipe.close()
    result["compiles"] = REC.compiles
    if device != "cuda":
        try:
            result["op_host_us"] = _op_microbench()
        except Exception as exc:  # noqa: BLE001
            result["op_host_us"] = f"failed: {type(exc).__name__}: {exc}"
    (out_dir / f"{device}_profile.txt").write_text(REC.prof_text + "\n\n=== cProfile ===\n" + REC.cprof_text)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "llama-3.2-1b-rand")
    parser.add_argument("--devices", default="maca,cuda")
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--timeout", type=int, default=240)
    parser.add_argument("--one", metavar="DEVICE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    if args.one:
        res = run_one(str(args.model_dir), args.one, args.block_size, args.out)
        (args.out / f"{args.one}_summary.json").write_text(json.dumps(res, indent=1))
        print("RESULT " + json.dumps(res))
        return 0

    if not (args.model_dir / "config.json").exists():
        build_model(args.model_dir)
    rows = []
    for device in args.devices.split(","):
        cmd = [sys.executable, __file__, "--one", device, "--model-dir", str(args.model_dir), "--out", str(args.out)]
        cmd += ["--block-size", str(args.block_size)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"[{device}] timeout", file=sys.stderr)
            continue
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"[{device}] FAILED rc={proc.returncode}\n{(proc.stderr or proc.stdout)[-4000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(lines[-1][len("RESULT ") :]))
    for r in rows:
        print(f"## {r['device_type']}: throughput {r['throughput_tok_s']} tok/s")
        for phase in ("b1_first", "b1_second", "b1_prof"):
            p = r[phase]
            print(
                f"  {phase}: {p['ms_per_token']} ms/token, median gap {p['gap_median_ms']}, p90 {p['gap_p90_ms']}, "
                f"max {p['gap_max'][:3]}; steps {p['steps']}"
            )
        comp = {}
        for c in r["compiles"]:
            key = c["phase"]
            comp.setdefault(key, []).append(f"{c['kernel']}:{c['s']}")
        for k, v in comp.items():
            if k not in ("startup",):
                print(f"  compiles in {k}: {v}")
        print(f"  compiles in startup: {len(comp.get('startup', []))}")
        if "op_host_us" in r:
            print(f"  op host us/call: {r['op_host_us']}")
    return 0 if len(rows) == len(args.devices.split(",")) else 1


if __name__ == "__main__":
    raise SystemExit(main())
