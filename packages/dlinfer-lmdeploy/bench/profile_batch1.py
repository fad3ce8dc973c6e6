"""Host time per eager decode step at batch 1: dlinfer (maca plugin) against LMDeploy's own cuda backend.

    python packages/dlinfer-lmdeploy/bench/profile_batch1.py --out $OUT             # GPU: Llama-3-8B shape
    python packages/dlinfer-lmdeploy/bench/profile_batch1.py --dry-run --out /tmp/p # CPU: cpu device, tiny model

A Llama-3-8B-shaped model (``shapes.SHAPES["llama3_8b"]``: hidden 4096, 32 layers, 32/8 heads, MLP 14336,
vocabulary 128256) with random bf16 weights is built on the GPU by the e2e benches' builder (``shapes.build``, under
``--model-root``, reused when present); ``--shape`` picks another of ``bench/shapes.py``. Then each device_type
(maca, cuda) runs in its own process, eager mode, batch 1:

* a timed stream: per decode step, the host (wall) time and engine-thread CPU time of LMDeploy's
  ``model_forward`` (context build + model forward, where eager launches happen), the step period (one
  ``model_forward`` start to the next: scheduling, sampling and the wait for the GPU included) and the GPU time of
  the model's ``forward`` (CUDA events);
* a profiled stream: torch.profiler over ``PROF`` decode steps, parsed from its exported trace: per step the device
  kernels by class (Triton, cuBLAS, other) and copies (DtoD, HtoD, DtoH, memset), host syncs (stream / device /
  event synchronize calls), counted for the whole step and inside ``model_forward``; cProfile over ``CPROF`` further
  steps in the engine thread: Python self time by package (dlinfer, dlinfer_maca, dlinfer_lmdeploy, lmdeploy,
  torch, triton, other; a C function's time goes to its caller's package, kept apart as "C calls"), and the
  inclusive time of dlinfer functions entered from outside dlinfer; then ``ATEN`` steps under a
  ``TorchDispatchMode`` counting the aten ops that reach the backend (views apart).

Kernel classes are heuristics, stated here: a kernel is cuBLAS when its name matches ``CUBLAS_RE``, Triton when a
Triton JIT function of that name was compiled in the process or it was launched through the driver API
(``cuLaunchKernel*``, Triton's launcher), otherwise "other" (aten kernels). The cProfile window adds its own
overhead to every Python call: its figures are proportions, the timed stream gives the absolute host time; from
Python 3.12 on (cProfile on ``sys.monitoring``) it sees every thread of the process, not only the engine's.

``--dry-run``: device ``cpu`` (the reference backend through the same adaptor), the shape's heads at
``shapes.TINY`` widths (``--layers`` deep, default 4), CPU profiler only; launches are then the aten ops per step.
Writes ``<device>_summary.json`` (all figures), ``<device>_profile.txt`` (top kernels, API calls, cProfile tables),
``<device>_trace.json.gz`` (the profiler trace), ``<device>_cprofile.pstats``, ``summary.json`` (all devices) and
prints a short table.
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import io
import json
import pstats
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lmdeploy_e2e_gpu import PROMPT_TOKENS, _prompts  # noqa: E402

NEW_TOKENS = 96  # per stream; decode steps of the profiled stream, in order:
SKIP, PROF, CPROF, ATEN = 6, 20, 20, 5  # untouched, torch.profiler, cProfile, aten-op count (2 idle between)
CUBLAS_RE = re.compile(r"gemm|gemv|cutlass|xmma|nvjet|cublas|splitkreduce", re.I)
SYNC_APIS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cuStreamSynchronize",
             "cuCtxSynchronize", "cuEventSynchronize")
DRIVER_LAUNCH = ("cuLaunchKernel", "cuLaunchKernelEx")
FWD_MARK = "profile_batch1::model_forward"
PACKAGES = ("dlinfer_lmdeploy", "dlinfer_maca", "dlinfer", "lmdeploy", "torch", "triton")
PY_ROWS = ("dlinfer", "dlinfer_maca", "dlinfer_lmdeploy", "lmdeploy", "torch", "triton", "dlinfer.reference",
           "cpu_device", "other")


class Recorder:
    def __init__(self) -> None:
        self.phase = "init"
        self.gpu = True
        self.triton_names: set[str] = set()
        self.compiles: list[dict[str, object]] = []
        self.steps: list[dict[str, Any]] = []  # decode model_forward calls
        self.current: dict[str, Any] = {}  # the decode step in progress
        self.decode_index = 0
        self.torch_prof: Any = None
        self.cprof: cProfile.Profile | None = None
        self.aten: Counter[str] | None = None
        self.aten_mode: Any = None
        self.results: dict[str, Any] = {}
        self.texts: list[str] = []


REC = Recorder()


def _sync() -> None:
    if REC.gpu:
        import torch

        torch.cuda.synchronize()


# -- instrumentation ----------------------------------------------------------------------------------------------
def _instrument(out_dir: Path, device: str) -> None:
    import torch
    from lmdeploy.pytorch.engine.model_agent import agent
    from lmdeploy.pytorch.models import llama

    if REC.gpu:
        import triton.runtime.jit as tjit

        orig_compile = tjit.JITFunction._do_compile

        def _do_compile(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            try:
                return orig_compile(self, *args, **kwargs)
            finally:
                name = getattr(self, "__name__", "?")
                REC.triton_names.add(name)
                REC.compiles.append({"phase": REC.phase, "kernel": name, "s": round(time.perf_counter() - t0, 4)})

        tjit.JITFunction._do_compile = _do_compile

    orig_mf = agent.model_forward

    def model_forward(model, inputs, *args, **kwargs):  # type: ignore[no-untyped-def]
        decoding = bool(getattr(inputs, "is_decoding", False)) and int(inputs.seq_length.numel()) == 1
        if not (decoding and REC.phase in ("timed", "prof")):
            return orig_mf(model, inputs, *args, **kwargs)
        i = REC.decode_index
        REC.decode_index += 1
        if REC.phase == "prof":
            _windows(i, out_dir, device)
        mark = torch.profiler.record_function(FWD_MARK) if REC.torch_prof is not None else None
        if mark is not None:
            mark.__enter__()
        REC.current = step = {"index": i}
        t0, c0 = time.perf_counter(), time.thread_time()
        out = orig_mf(model, inputs, *args, **kwargs)
        wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
        if mark is not None:
            mark.__exit__(None, None, None)
        if REC.phase == "timed":
            step.update(t0=t0, wall_s=wall, cpu_s=cpu)
            REC.steps.append(step)
        return out

    agent.model_forward = model_forward

    orig_fwd = llama.LlamaForCausalLM.forward

    def forward(self, input_ids, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not (REC.gpu and REC.phase == "timed" and input_ids.numel() == 1):
            return orig_fwd(self, input_ids, *args, **kwargs)
        ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        ev0.record()
        out = orig_fwd(self, input_ids, *args, **kwargs)
        ev1.record()
        REC.current.setdefault("events", []).append((ev0, ev1))
        return out

    llama.LlamaForCausalLM.forward = forward


def _windows(i: int, out_dir: Path, device: str) -> None:
    """Open / close the profiling windows of the profiled stream at decode step ``i`` (engine thread)."""
    from torch.profiler import ProfilerActivity, profile

    p0 = SKIP
    c0 = p0 + PROF + 2
    a0 = c0 + CPROF + 2
    if i == p0:
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if REC.gpu else [])
        REC.torch_prof = profile(activities=acts)
        REC.torch_prof.__enter__()
    elif i == p0 + PROF and REC.torch_prof is not None:
        _sync()
        prof, REC.torch_prof = REC.torch_prof, None
        prof.__exit__(None, None, None)
        REC.results["profiler"] = _summarise_trace(prof, PROF, out_dir, device)
        (out_dir / f"{device}_partial.json").write_text(json.dumps(REC.results, indent=1))
    elif i == c0:
        REC.cprof = cProfile.Profile()
        REC.cprof.enable()
    elif i == c0 + CPROF and REC.cprof is not None:
        REC.cprof.disable()
        REC.cprof.dump_stats(str(out_dir / f"{device}_cprofile.pstats"))
        REC.results["python"] = _summarise_cprofile(REC.cprof, CPROF)
        (out_dir / f"{device}_partial.json").write_text(json.dumps(REC.results, indent=1))
        REC.cprof = None
    elif i == a0:
        REC.aten = Counter()
        REC.aten_mode = _aten_counter(REC.aten)
        REC.aten_mode.__enter__()
    elif i == a0 + ATEN and REC.aten_mode is not None:
        REC.aten_mode.__exit__(None, None, None)
        REC.results["aten_ops"] = _summarise_aten(REC.aten or Counter(), ATEN)
        REC.aten_mode = None


def _aten_counter(counts: Counter[str]) -> Any:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            counts[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    return Count()


# -- summaries ----------------------------------------------------------------------------------------------------
def _kernel_class(name: str, launcher: str | None) -> str:
    if CUBLAS_RE.search(name):
        return "cublas"
    if name in REC.triton_names or (launcher or "").startswith(DRIVER_LAUNCH):
        return "triton"
    return "other"


def _summarise_trace(prof: Any, steps: int, out_dir: Path, device: str) -> dict[str, Any]:
    """Per-step launch figures from the profiler's exported trace (kernels joined to their launch call)."""
    path = out_dir / f"{device}_trace.json"
    prof.export_chrome_trace(str(path))
    trace = json.loads(path.read_text())
    with gzip.open(str(path) + ".gz", "wt") as f:
        json.dump(trace, f)
    path.unlink()
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    fwd = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == FWD_MARK
                 and e.get("cat") in ("user_annotation", "cpu_op"))

    def in_fwd(ts: float) -> bool:
        return any(a <= ts <= b for a, b in fwd)

    launch: dict[Any, dict[str, Any]] = {}
    api: Counter[str] = Counter()
    api_us: Counter[str] = Counter()
    syncs = Counter({"step": 0, "forward": 0})
    for e in events:
        if e.get("cat") in ("cuda_runtime", "cuda_driver"):
            api[e["name"]] += 1
            api_us[e["name"]] += e.get("dur", 0)
            corr = (e.get("args") or {}).get("correlation")
            if corr is not None:
                launch[corr] = e
            if e["name"] in SYNC_APIS:
                syncs["step"] += 1
                syncs["forward"] += in_fwd(e["ts"])
    classes = ("triton", "cublas", "other", "DtoD", "HtoD", "DtoH", "memset", "copy_other")
    count = {scope: Counter({c: 0 for c in classes}) for scope in ("step", "forward")}
    kernels: Counter[str] = Counter()
    kernel_us: Counter[str] = Counter()
    for e in events:
        cat = e.get("cat")
        if cat not in ("kernel", "gpu_memcpy", "gpu_memset"):
            continue
        src = launch.get((e.get("args") or {}).get("correlation"))
        name = e["name"]
        if cat == "kernel":
            cls = _kernel_class(name, src["name"] if src else None)
        elif cat == "gpu_memset":
            cls = "memset"
        else:
            m = re.search(r"(DtoD|HtoD|DtoH)", name)
            cls = m.group(1) if m else "copy_other"
        kernels[f"[{cls}] {name[:90]}"] += 1
        kernel_us[f"[{cls}] {name[:90]}"] += e.get("dur", 0)
        count["step"][cls] += 1
        if src is not None and in_fwd(src["ts"]):
            count["forward"][cls] += 1
    cpu_ops = Counter(e["name"] for e in events if e.get("cat") == "cpu_op" and e["name"].startswith("aten::"))
    per = {scope: {k: round(v / steps, 2) for k, v in c.items()} for scope, c in count.items()}
    for scope in per:
        per[scope]["launches"] = round(sum(count[scope].values()) / steps, 2)
        per[scope]["host_syncs"] = round(syncs[scope] / steps, 2)
    res: dict[str, Any] = {
        "steps": steps,
        "forward_spans_found": len(fwd),
        "per_step": per["step"],
        "per_step_in_model_forward": per["forward"],
        "api_calls_per_step": {k: round(v / steps, 2) for k, v in api.most_common(20)},
        "aten_cpu_ops_per_step_profiler": round(sum(cpu_ops.values()) / steps, 1),
    }
    lines = [f"=== {device}: torch.profiler over {steps} decode steps (batch 1) ==="]
    lines.append("-- device events (count per step, device us per step)")
    lines += [f"{n / steps:8.2f} {kernel_us[k] / steps:9.1f}  {k}" for k, n in kernels.most_common(50)]
    lines.append("-- runtime / driver API calls (count per step, host us per step)")
    lines += [f"{n / steps:8.2f} {api_us[k] / steps:9.1f}  {k}" for k, n in api.most_common(25)]
    lines.append("-- CPU ops by self CPU time (all steps)")
    lines.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=70))
    REC.texts.append("\n".join(lines))
    return res


def _package(filename: str) -> str:
    """The package a code object belongs to; the reference backend (the CPU's stand-in for vendor kernels) and the
    CPU device's torch.cuda redirection (absent on accelerators) are kept apart from the adaptor."""
    if filename.startswith("<dlinfer.ops."):  # the generated public op wrappers
        return "dlinfer"
    norm = filename.replace("\\", "/")
    if "/dlinfer/reference/" in norm:
        return "dlinfer.reference"
    if norm.endswith("/dlinfer_lmdeploy/cpu_device.py"):
        return "cpu_device"
    for pkg in PACKAGES:
        if f"/{pkg}/" in norm:
            return pkg
    return "other"


def _summarise_cprofile(prof: cProfile.Profile, steps: int) -> dict[str, Any]:
    """Python time per step by package: self time of Python functions, C calls charged to their caller's package."""
    st = pstats.Stats(prof)
    self_us: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    inclusive_dlinfer = 0.0
    dl = ("dlinfer", "dlinfer_maca", "dlinfer_lmdeploy")
    for func, (_cc, nc, tt, _ct, callers) in st.stats.items():  # type: ignore[attr-defined]
        filename = func[0]
        if filename == "~":  # a C function: its time goes to the callers' packages, per call edge
            for caller, edge in callers.items():
                self_us[f"{_package(caller[0])} (C calls)"] += edge[2] * 1e6
            continue
        pkg = _package(filename)
        self_us[pkg] += tt * 1e6
        calls[pkg] += nc
        if pkg in dl:
            by_file[f"{pkg}: {Path(filename).name}"] += tt * 1e6
            inclusive_dlinfer += sum(edge[3] for caller, edge in callers.items()
                                     if _package(caller[0]) not in dl) * 1e6
    total = sum(self_us.values())
    s = io.StringIO()
    ps = pstats.Stats(prof, stream=s)
    ps.sort_stats("tottime").print_stats(40)
    ps.sort_stats("cumulative").print_stats(60)
    REC.texts.append(f"=== cProfile over {steps} decode steps ===\n{s.getvalue()}")
    return {
        "steps": steps,
        "note": "cProfile on: absolute figures inflated by the profiler; compare shares",
        "total_us_per_step": round(total / steps, 1),
        "self_us_per_step": {k: round(v / steps, 1) for k, v in self_us.most_common()},
        "python_calls_per_step": {k: round(v / steps, 1) for k, v in calls.most_common()},
        "dlinfer_inclusive_us_per_step": round(inclusive_dlinfer / steps, 1),
        "dlinfer_self_us_per_step_by_file": {k: round(v / steps, 1) for k, v in by_file.most_common(15)},
    }


_VIEWS = ("aten.view", "aten._unsafe_view", "aten.reshape", "aten.t", "aten.transpose", "aten.slice",
          "aten.select", "aten.expand", "aten.unsqueeze", "aten.squeeze", "aten.as_strided", "aten.permute",
          "aten.detach", "aten.alias", "aten.split", "aten.split_with_sizes", "aten.unbind", "aten.narrow")


def _summarise_aten(counts: Counter[str], steps: int) -> dict[str, Any]:
    views = sum(n for k, n in counts.items() if k in _VIEWS)
    total = sum(counts.values())
    return {
        "steps": steps,
        "per_step": round(total / steps, 1),
        "non_view_per_step": round((total - views) / steps, 1),
        "views_per_step": round(views / steps, 1),
        "top": {k: round(n / steps, 2) for k, n in counts.most_common(25)},
    }


def _timed_summary() -> dict[str, Any]:
    steps = REC.steps[4:]  # the first decode steps of a stream warm caches
    med = statistics.median
    periods = [(b["t0"] - a["t0"]) * 1e3 for a, b in zip(steps, steps[1:], strict=False)]
    gpu = [sum(e0.elapsed_time(e1) for e0, e1 in s.get("events", [])) for s in steps if s.get("events")]
    return {
        "decode_steps": len(steps),
        "host_wall_ms_median": round(med(s["wall_s"] for s in steps) * 1e3, 3),
        "host_wall_ms_p90": round(sorted(s["wall_s"] for s in steps)[int(0.9 * len(steps))] * 1e3, 3),
        "engine_thread_cpu_ms_median": round(med(s["cpu_s"] for s in steps) * 1e3, 3),
        "step_period_ms_median": round(med(periods), 3) if periods else None,
        "gpu_forward_ms_median": round(med(gpu), 3) if gpu else None,
    }


def _op_microbench(shape: dict[str, int], dev: str = "cuda") -> dict[str, float]:
    """Host microseconds per dlinfer op call at batch-1 decode shapes of the model (no sync inside the loop)."""
    import torch
    from dlinfer import ops

    dt = torch.bfloat16
    H, Hq, Hkv, D, inter = (shape[k] for k in ("hidden", "heads", "kv_heads", "head_dim", "inter"))
    x = torch.randn(1, H, device=dev, dtype=dt)
    w = torch.randn(H, device=dev, dtype=dt)
    qkv = torch.randn(1, (Hq + 2 * Hkv) * D, device=dev, dtype=dt)
    q = qkv[:, : Hq * D].view(1, Hq, D)
    k = qkv[:, Hq * D : (Hq + Hkv) * D].view(1, Hkv, D)
    v = qkv[:, (Hq + Hkv) * D :].view(1, Hkv, D)
    cos = torch.randn(1, D, device=dev, dtype=dt)
    sin = torch.randn(1, D, device=dev, dtype=dt)
    kc = torch.randn(64, 64, Hkv, D, device=dev, dtype=dt)
    vc = torch.randn(64, 64, Hkv, D, device=dev, dtype=dt)
    bt = torch.arange(8, device=dev, dtype=torch.int32)[None]
    seqlens = torch.tensor([300], device=dev, dtype=torch.int32)
    slot = torch.tensor([299], device=dev, dtype=torch.int64)
    gu = torch.randn(1, 2 * inter, device=dev, dtype=dt)
    wq = torch.randn(H, H, device=dev, dtype=dt)
    cases = {
        "rms_norm": lambda: ops.rms_norm(x, w, eps=1e-5),
        "add_rms_norm": lambda: ops.add_rms_norm(x, x, w, eps=1e-5),
        "apply_rotary_pos_emb_inplace": lambda: ops.apply_rotary_pos_emb_inplace(q, k, cos, sin),
        "fill_kv_cache": lambda: ops.fill_kv_cache(k, v, kc, vc, slot, kv_layout="NHD"),
        "paged_decode_attention(ctx300)": lambda: ops.paged_decode_attention(
            q, kc, vc, bt, seqlens, max_seqlen_kv=300, kv_layout="NHD"
        ),
        "silu_and_mul": lambda: ops.silu_and_mul(gu),
        f"linear({H}x{H})": lambda: ops.linear(x, wq),
        "torch.empty(1xH)": lambda: torch.empty((1, H), device=dev, dtype=dt),
        "tensor.copy_(q)": lambda: q.copy_(q),
    }
    res: dict[str, float] = {}
    for name, fn in cases.items():
        for _ in range(20):
            fn()
        _sync()
        n = 300
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        res[name] = round((time.perf_counter() - t0) / n * 1e6, 2)
        _sync()
    return res


# -- one device ---------------------------------------------------------------------------------------------------
def _stream(pipe: Any, gen: Any, seed: int) -> int:
    count = 0
    for out in pipe.stream_infer(_prompts(1, PROMPT_TOKENS, seed=seed), gen_config=gen, do_preprocess=False):
        count += len(out.token_ids or [])
    return count


def _write(out_dir: Path, device: str, result: dict[str, Any]) -> None:
    (out_dir / f"{device}_summary.json").write_text(json.dumps({**result, **REC.results}, indent=1))


def _empty_last(x: Any, last: int) -> Any:
    return x.new_empty((*x.shape[:-1], last))


NULL_FAST: dict[str, Any] = {  # the ops of a dense decode step, without the generic shape binding's cost
    "rms_norm": lambda x, weight, **kw: x.new_empty(x.shape),
    "add_rms_norm": lambda x, residual, weight, **kw: (x.new_empty(x.shape), x.new_empty(x.shape)),
    "linear": lambda x, weight, bias=None, **kw: _empty_last(x, weight.shape[0]),
    "silu_and_mul": lambda x, **kw: _empty_last(x, x.shape[-1] // 2),
    "apply_rotary_pos_emb_inplace": lambda *a, **kw: None,
    "fill_kv_cache": lambda *a, **kw: None,
    "paged_decode_attention": lambda q, key_cache, value_cache, *a, **kw: _empty_last(q, value_cache.shape[-1]),
}


def null_kernels() -> None:
    """Replace every op of the active dispatch table by an empty result of the right shape (in-place ops do
    nothing; ops outside ``NULL_FAST`` use the spec's shape function, ``dlinfer.custom_ops``' fake kernel): what is
    left of a step is the host work of LMDeploy, the adaptor and torch, as on a device whose kernels run
    asynchronously. Tokens are meaningless."""
    from dlinfer import dispatch
    from dlinfer.custom_ops import _fake
    from dlinfer.spec import SPECS

    for name, spec in SPECS.items():
        if spec.graph_op:
            setattr(dispatch.TABLE, name, NULL_FAST.get(name) or _fake(spec))


def run_one(model_dir: str, device: str, block_size: int, out_dir: Path, dry_run: bool,
            null: bool = False) -> dict[str, Any]:
    import torch
    from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline

    import dlinfer_lmdeploy  # noqa: F401

    REC.gpu = not dry_run
    if dry_run:
        torch.set_num_threads(1)
    _instrument(out_dir, device)
    cfg = PytorchEngineConfig(
        device_type=device,
        eager_mode=True,
        max_batch_size=4,
        session_len=PROMPT_TOKENS + NEW_TOKENS + 64,
        block_size=block_size,
        **({"dtype": "float32", "num_gpu_blocks": 64} if dry_run else {"cache_max_entry_count": 0.5}),
    )
    REC.phase = "startup"
    t0 = time.perf_counter()
    pipe = pipeline(model_dir, backend_config=cfg, log_level="ERROR")
    if null:
        null_kernels()
    result: dict[str, Any] = {
        "null_kernels": null,
        "device_type": device,
        "gpu": torch.cuda.get_device_name(0) if REC.gpu else "none (dry run, cpu)",
        "startup_s": round(time.perf_counter() - t0, 1),
    }
    gen = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, top_k=1, ignore_eos=True)
    try:
        REC.phase = "warmup"
        t0 = time.perf_counter()
        pipe(_prompts(1, PROMPT_TOKENS), gen_config=GenerationConfig(max_new_tokens=16, ignore_eos=True),
             do_preprocess=False)
        _stream(pipe, GenerationConfig(max_new_tokens=8, ignore_eos=True), seed=9)
        _sync()
        result["warmup_s"] = round(time.perf_counter() - t0, 1)
        REC.phase, REC.decode_index = "timed", 0
        _stream(pipe, gen, seed=1)
        _sync()
        result["timed"] = _timed_summary()
        _write(out_dir, device, result)  # partial figures survive a later failure or time-out
        REC.phase, REC.decode_index = "prof", 0
        _stream(pipe, gen, seed=2)
        _sync()
    finally:
        REC.phase = "close"
        pipe.close()
    result.update(REC.results)
    result["compiles_after_warmup"] = [c for c in REC.compiles if c["phase"] not in ("startup", "warmup")]
    result["compiles_total"] = len(REC.compiles)
    result["python_version"] = sys.version.split()[0]
    result["torch_version"] = torch.__version__
    (out_dir / f"{device}_profile.txt").write_text("\n\n".join(REC.texts))
    return result


# -- driver -------------------------------------------------------------------------------------------------------
def build(root: Path, shape: str, dry_run: bool, layers: int | None) -> tuple[Path, dict[str, int]]:
    """The model of ``shapes.SHAPES[shape]`` under ``root`` (built once, by the e2e benches' builder: random bf16
    weights on the GPU, or on the CPU at ``shapes.TINY`` widths for a dry run) and its dimensions."""
    from shapes import SHAPES
    from shapes import build as build_shape

    n = layers or (4 if dry_run else SHAPES[shape][2])
    path = build_shape(shape, n, root, "cpu" if dry_run else "cuda", tiny=dry_run)
    cfg = json.loads((path / "config.json").read_text())
    heads = cfg["num_attention_heads"]
    dims = {"hidden": cfg["hidden_size"], "layers": cfg["num_hidden_layers"], "heads": heads,
            "kv_heads": cfg.get("num_key_value_heads") or heads,
            "head_dim": cfg.get("head_dim") or cfg["hidden_size"] // heads, "inter": cfg["intermediate_size"],
            "vocab": cfg["vocab_size"]}
    return path, dims


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown: one column per device."""

    def get(r: dict[str, Any], *path: str) -> Any:
        for p in path:
            r = r.get(p) if isinstance(r, dict) else None  # type: ignore[assignment]
        return "-" if r is None else r

    spec: list[tuple[str, Any]] = [
        ("host wall ms / step (model_forward, median)", ("timed", "host_wall_ms_median")),
        ("engine-thread CPU ms / step (median)", ("timed", "engine_thread_cpu_ms_median")),
        ("step period ms (median)", ("timed", "step_period_ms_median")),
        ("GPU ms / forward (median)", ("timed", "gpu_forward_ms_median")),
        ("launches / step (device events)", ("profiler", "per_step", "launches")),
        ("  of which in model_forward", ("profiler", "per_step_in_model_forward", "launches")),
        ("Triton kernels / step", ("profiler", "per_step", "triton")),
        ("cuBLAS kernels / step", ("profiler", "per_step", "cublas")),
        ("other kernels / step", ("profiler", "per_step", "other")),
        ("DtoD copies / step", ("profiler", "per_step", "DtoD")),
        ("HtoD / DtoH copies / step", None),
        ("host syncs / step", ("profiler", "per_step", "host_syncs")),
        ("aten ops / step (dispatch mode; non-view)", None),
        *((f"Python us / step: {pkg} (self + C calls)", pkg) for pkg in PY_ROWS),
        ("Python us / step: inside dlinfer, inclusive", ("python", "dlinfer_inclusive_us_per_step")),
    ]
    lines = ["| per decode step | " + " | ".join(r["device_type"] for r in rows) + " |",
             "|---|" + "---|" * len(rows)]
    for label, path in spec:
        cells = []
        for r in rows:
            if isinstance(path, str):
                su = get(r, "python", "self_us_per_step")
                su = su if isinstance(su, dict) else {}
                cells.append(f"{su.get(path, 0.0):.0f} + {su.get(path + ' (C calls)', 0.0):.0f}")
            elif path is not None:
                cells.append(str(get(r, *path)))
            elif label.startswith("HtoD"):
                cells.append(f"{get(r, 'profiler', 'per_step', 'HtoD')} / {get(r, 'profiler', 'per_step', 'DtoH')}")
            else:
                cells.append(f"{get(r, 'aten_ops', 'per_step')} ({get(r, 'aten_ops', 'non_view_per_step')})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llama3_8b", help="a name of bench/shapes.py (GPU time: Llama shapes)")
    parser.add_argument("--layers", type=int, default=None, help="default: the shape's (dry run: 4)")
    parser.add_argument("--model-root", type=Path, default=Path("/tmp/perf-models"),
                        help="where the model is built once (shared with tools/gpu_perf.sh's profile phase)")
    parser.add_argument("--model-dir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--devices", default=None, help="default maca,cuda (dry run: cpu)")
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--timeout", type=int, default=200, help="seconds per device process")
    parser.add_argument("--dry-run", action="store_true", help="CPU: cpu device, tiny model, no CUDA profiling")
    parser.add_argument("--null-kernels", action="store_true",
                        help="with --dry-run: every dlinfer op replaced by its shape function (host work only)")
    parser.add_argument("--one", metavar="DEVICE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.null_kernels and not args.dry_run:
        parser.error("--null-kernels needs --dry-run (the cpu device)")
    args.out.mkdir(parents=True, exist_ok=True)
    devices = (args.devices or ("cpu" if args.dry_run else "maca,cuda")).split(",")

    if args.one:
        res = run_one(str(args.model_dir), args.one, args.block_size, args.out, args.dry_run, args.null_kernels)
        if not args.dry_run and args.one != "cuda":
            try:
                res["op_host_us"] = _op_microbench(json.loads((args.out / "shape.json").read_text()))
            except Exception as exc:  # noqa: BLE001
                res["op_host_us"] = f"failed: {type(exc).__name__}: {exc}"
        (args.out / f"{args.one}_summary.json").write_text(json.dumps(res, indent=1))
        print("RESULT " + json.dumps(res))
        return 0

    t0 = time.perf_counter()
    args.model_dir, shape = build(args.model_root, args.shape, args.dry_run, args.layers)
    (args.out / "shape.json").write_text(json.dumps(shape))
    print(f"model {shape} ready in {time.perf_counter() - t0:.1f}s at {args.model_dir}", file=sys.stderr)
    rows = []
    for device in devices:
        cmd = [sys.executable, __file__, "--one", device, "--model-dir", str(args.model_dir), "--out", str(args.out),
               "--block-size", str(args.block_size)] + (["--dry-run"] if args.dry_run else [])
        cmd += ["--null-kernels"] if args.null_kernels else []
        t1 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired as exc:
            print(f"[{device}] timeout after {args.timeout}s\n{str(exc.stderr or '')[-3000:]}", file=sys.stderr)
            continue
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"[{device}] FAILED rc={proc.returncode}\n{(proc.stderr or proc.stdout)[-4000:]}", file=sys.stderr)
            continue
        row = json.loads(lines[-1][len("RESULT ") :])
        row["wall_s"] = round(time.perf_counter() - t1, 1)
        print(f"[{device}] done in {row['wall_s']} s", file=sys.stderr)
        rows.append(row)
        summary = {"shape": shape, "model_dir": str(args.model_dir), "dry_run": args.dry_run, "rows": rows}
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))  # each device's row as it comes
        if device != devices[-1]:
            print("\n".join(table(rows)), file=sys.stderr, flush=True)
    print(f"shape {shape}, batch 1, eager, {NEW_TOKENS} new tokens per stream after a {PROMPT_TOKENS}-token prompt")
    print("\n".join(table(rows)))
    return 0 if len(rows) == len(devices) else 1


if __name__ == "__main__":
    raise SystemExit(main())
