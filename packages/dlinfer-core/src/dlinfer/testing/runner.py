"""Runs conformance cases: one backend's op against the reference on fresh random inputs."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from dlinfer._sync import synchronize
from dlinfer.plugin import StepMetadata
from dlinfer.registry import REFERENCE, REGISTRY
from dlinfer.spec import KV_LAYOUTS, SPECS, OpSpec
from dlinfer.testing.cases import Case, cases_for
from dlinfer.testing.compare import Diff, compare_tensor, merge, poison_allocator
from dlinfer.testing.tolerances import UNIT_ROUNDOFF, tolerance

Ops = Mapping[str, Callable[..., Any]]


@dataclass
class CaseResult:
    op: str
    case: str
    dtype: str
    layout: str
    status: str  # "pass" | "fail" | "unsupported" | "error"
    max_abs: float = 0.0
    max_rel: float = 0.0
    detail: str = ""
    seed: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status in ("pass", "unsupported")


def _buffer(t: torch.Tensor) -> torch.Tensor | None:
    """The dense tensor ``t`` is a view of (e.g. the fused qkv output q and k are sliced from), else None."""
    base = t._base
    if base is None or not base.is_contiguous() or base.storage_offset() != 0:
        return None
    return base


def _rebuild(args: dict[str, Any], fn: Callable[[torch.Tensor], torch.Tensor], *, skip_cpu: bool = False
             ) -> dict[str, Any]:
    """Apply ``fn`` (a copy or a device move) to every tensor argument, keeping views as views.

    Arguments that are views of one buffer become views, with the same sizes, strides and offsets, of one
    ``fn(buffer)``: a strided q and k stay strided slices of a single qkv copy, as a framework passes them.
    """
    done: dict[int, torch.Tensor] = {}
    out: dict[str, Any] = {}
    for name, v in args.items():
        if not isinstance(v, torch.Tensor) or (skip_cpu and name.endswith("_cpu")):
            out[name] = v
            continue
        base = _buffer(v)
        if base is None:
            out[name] = fn(v)
            continue
        key = base.untyped_storage().data_ptr()
        if key not in done:
            done[key] = fn(base)
        out[name] = done[key].as_strided(v.shape, v.stride(), v.storage_offset())
    return out


def _to(args: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return _rebuild(args, lambda t: t.to(device), skip_cpu=True)


def _clone(args: dict[str, Any]) -> dict[str, Any]:
    return _rebuild(args, lambda t: t.clone())


def _untouched_outside(spec: OpSpec, got: Mapping[str, Any], before: Mapping[str, Any]) -> list[Diff]:
    """A mutated argument that is a view of a larger buffer: nothing outside the mutated views may change."""
    diffs: list[Diff] = []
    groups: dict[int, list[str]] = {}
    for name in spec.mutated:
        v = got.get(name)
        if isinstance(v, torch.Tensor) and _buffer(v) is not None:
            groups.setdefault(v.untyped_storage().data_ptr(), []).append(name)
    for names in groups.values():
        buf = _buffer(got[names[0]])
        ref = _buffer(before[names[0]])
        assert buf is not None
        if ref is None or ref.shape != buf.shape:
            continue
        written = torch.zeros(buf.numel(), dtype=torch.bool, device=buf.device)
        for name in names:
            v = got[name]
            written.as_strided(v.shape, v.stride(), v.storage_offset()).fill_(True)
        keep = ~written
        if not torch.equal(buf.reshape(-1)[keep], ref.reshape(-1)[keep]):
            bad = int((buf.reshape(-1)[keep] != ref.reshape(-1)[keep]).sum())
            diffs.append(Diff(False, 0.0, 0.0, f"{bad} elements of the buffer that {', '.join(names)} view "
                                               "were modified outside those views"))
    return diffs


def call(spec: OpSpec, fn: Callable[..., Any], args: Mapping[str, Any]) -> Any:
    """Call an implementation the way dlinfer.ops does: tensors positionally, options by keyword."""
    pos = [args.get(p.name) for p in spec.params if not p.keyword_only]
    kw = {p.name: args.get(p.name, p.default) for p in spec.params if p.keyword_only}
    if kw.get("plan", 0) is None:  # an implementation may omit the plan keyword (it is then never given one)
        del kw["plan"]
    return fn(*pos, **kw)


def _outputs(spec: OpSpec, result: Any, args: Mapping[str, Any]) -> list[tuple[str, Any]]:
    if not spec.outputs:
        return [(name, args[name]) for name in spec.mutated]
    if len(spec.outputs) == 1:
        return [(spec.outputs[0].name, result)]
    if not isinstance(result, (tuple, list)) or len(result) != len(spec.outputs):
        return [(o.name, None) for o in spec.outputs]
    return [(o.name, r) for o, r in zip(spec.outputs, result)]


def _canonical_topk(outs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Order each row's (weight, id) pairs by id so that backends may return the top-k in any order."""
    (wn, w), (iname, ids) = outs
    if not isinstance(w, torch.Tensor) or not isinstance(ids, torch.Tensor):
        return outs
    order = ids.long().argsort(-1)
    return [(wn, w.gather(-1, order)), (iname, ids.gather(-1, order))]


def step_metadata(op: str, args: Mapping[str, Any], layout: str) -> StepMetadata:
    """The :class:`StepMetadata` a framework would give ``Backend.prepare_metadata`` for one attention call's
    arguments (the same tensor objects, so that a plan recognises the call)."""
    if op == "paged_decode_attention":
        kv = args["seqlens_kv"]
        cu = torch.arange(kv.shape[0] + 1, dtype=torch.int32, device=kv.device)
    else:
        cu = args["cu_seqlens_q"]
        kv = args["seqlens_kv"] if op == "paged_prefill_attention" else (cu[1:] - cu[:-1])
    table = args.get("block_table")
    if table is None:
        table = torch.zeros(kv.shape[0], 0, dtype=torch.int32, device=kv.device)
    cache = args.get("key_cache")
    block_size = 0 if cache is None else int(cache.shape[KV_LAYOUTS[layout].index("BS")])
    kv_cpu = args.get("seqlens_kv_cpu")
    return StepMetadata(cu_seqlens_q=cu, seqlens_kv=kv, block_table=table,
                        max_seqlen_q=int(args.get("max_seqlen_q", 1)),
                        max_seqlen_kv=int(args.get("max_seqlen_kv", args.get("max_seqlen_q", 1))),
                        block_size=block_size, decode=op == "paged_decode_attention",
                        cu_seqlens_q_cpu=args.get("cu_seqlens_q_cpu"),
                        seqlens_kv_cpu=kv_cpu if op != "prefill_attention" else None)


def _plan_diffs(spec: OpSpec, fn: Callable[..., Any], base: Mapping[str, Any], without: list[tuple[str, Any]],
                prepare: Callable[[StepMetadata], Any], layout: str) -> list[Diff]:
    """The op called with the backend's plan (twice, as two layers of one step) must give exactly the output it
    gave without one."""
    diffs = []
    args = _clone(base)
    args["plan"] = prepare(step_metadata(spec.name, args, layout))
    for layer in (1, 2):
        with_plan = _outputs(spec, call(spec, fn, args), args)
        for (name, got), (_, want) in zip(with_plan, without):
            if not (isinstance(got, torch.Tensor) and isinstance(want, torch.Tensor) and torch.equal(got, want)):
                diffs.append(Diff(False, 0.0, 0.0, f"'{name}' with the backend's plan (layer {layer}) differs from "
                                                   "the output without a plan"))
    return diffs


def rounded_weight_bound(args: Mapping[str, Any], dtype: torch.dtype) -> torch.Tensor:
    """Forward error bound of rounding each dequantised W4A16 weight once to ``dtype`` (:attr:`OpSpec.rounded_weight`):
    ``u * |x| @ |W|``, ``[..., OUT]``, from the case's canonical (unprepared) AWQ arguments."""
    from dlinfer.reference.quant import dequant_awq

    x = args["x"].float()
    w = dequant_awq(args["qweight"], args["scales"], args["qzeros"], args["group_size"]).to(x.device)
    return UNIT_ROUNDOFF[dtype] * (x.abs().reshape(-1, x.shape[-1]) @ w.abs()).reshape(*x.shape[:-1], w.shape[-1])


def run_case(
    case: Case,
    dtype: torch.dtype,
    ops: Ops,
    reference: Ops,
    *,
    device: torch.device | str = "cpu",
    layout: str = "NHD",
    seed: int | None = None,
    prepare_metadata: Callable[[StepMetadata], Any] | None = None,
) -> CaseResult:
    """Run one case with a fresh seed: poison memory, call the backend, compare with the reference.
    ``prepare_metadata`` (a backend's ``Backend.prepare_metadata``): an op taking a ``plan`` must also give the
    same output with the plan built from the case's arguments."""
    spec = SPECS[case.op]
    seed = random.randrange(2**31) if seed is None else seed
    device = torch.device(device)
    res = CaseResult(case.op, case.name, str(dtype).replace("torch.", ""), layout, "pass", seed=seed)
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    base = _to(case.build(gen, dtype, layout), device)
    mine, theirs = _clone(base), _clone(base)
    try:
        if case.op == "weight_quant_matmul":
            prepared = ops["weight_quant_prepare"](mine["qweight"], mine["scales"], mine["qzeros"],
                                                   group_size=mine["group_size"])
            mine["qweight"], mine["scales"], mine["qzeros"] = prepared
        poison_allocator(device)
        got = call(spec, ops[case.op], mine)
        synchronize(device)
    except NotImplementedError as exc:
        msg = str(exc)
        if case.option and case.option.split("=")[0] in msg:
            res.status, res.detail = "unsupported", msg
        else:
            res.status = "fail"
            res.detail = f"NotImplementedError not naming the case's option ({case.option}): {msg}"
        res.seconds = time.perf_counter() - start
        return res
    except Exception as exc:  # noqa: BLE001 - every failure becomes a table row
        res.status, res.detail = "error", f"{type(exc).__name__}: {exc}"
        res.seconds = time.perf_counter() - start
        return res
    want = call(spec, reference[case.op], theirs)
    got_outs, want_outs = _outputs(spec, got, mine), _outputs(spec, want, theirs)
    if case.op == "moe_gating_topk_softmax":
        got_outs, want_outs = _canonical_topk(got_outs), _canonical_topk(want_outs)
    tol = tolerance(dtype, case.accumulating)
    allowance = rounded_weight_bound(base, dtype) if spec.rounded_weight else None
    diffs: list[Diff] = [compare_tensor(n, g, w, tol, allowance) for (n, g), (_, w) in zip(got_outs, want_outs)]
    if case.op != "weight_quant_matmul":
        for p in spec.params:  # inputs not declared as mutated must be left untouched
            checked = p.kind == "tensor" and not p.mutated and isinstance(base.get(p.name), torch.Tensor)
            if checked and not torch.equal(mine[p.name], base[p.name]):
                diffs.append(Diff(False, 0.0, 0.0, f"input '{p.name}' was modified"))
        diffs += _untouched_outside(spec, mine, base)
    if prepare_metadata is not None and any(p.kind == "plan" for p in spec.params):
        diffs += _plan_diffs(spec, ops[case.op], base, got_outs, prepare_metadata, layout)
    d = merge(diffs)
    res.status = "pass" if d.ok else "fail"
    res.max_abs, res.max_rel, res.detail = d.max_abs, d.max_rel, d.detail
    res.seconds = time.perf_counter() - start
    return res


def backend_layouts(name: str) -> tuple[str, ...]:
    rec = REGISTRY.records[name]
    assert rec.backend is not None
    return ("NHD", "HND") if name == REFERENCE else (rec.backend.kv_layout,)


def plan(
    backend: str, *, ops: Iterable[str] | None = None, dtypes: Iterable[torch.dtype] | None = None,
    size: str = "small", layouts: Iterable[str] | None = None,
) -> list[tuple[Case, torch.dtype, str]]:
    """The (case, dtype, layout) runs for one backend, restricted to the ops it implements."""
    REGISTRY.discover()
    implemented = REGISTRY.load_ops(backend)
    wanted = set(ops) if ops is not None else set(implemented)
    lays = tuple(layouts) if layouts is not None else backend_layouts(backend)
    declared = REGISTRY.records[backend].backend.dtypes  # type: ignore[union-attr]
    capabilities = REGISTRY.records[backend].backend.capabilities  # type: ignore[union-attr]
    runs = []
    for case in cases_for(size=size):
        if case.op not in wanted or case.op not in implemented:
            continue
        if case.requires is not None and not getattr(capabilities, case.requires):
            continue  # a feature the backend does not claim (Capabilities): not run
        for dt in case.dtypes:
            if (dtypes is not None and dt not in tuple(dtypes)) or dt not in declared:
                continue
            uses_layout = any(p.name == "kv_layout" for p in SPECS[case.op].params)
            for lay in lays if uses_layout else lays[:1]:
                runs.append((case, dt, lay))
    return runs


def run_conformance(
    backend: str,
    *,
    ops: Iterable[str] | None = None,
    dtypes: Iterable[torch.dtype] | None = None,
    size: str = "small",
    device: str | None = None,
    layouts: Iterable[str] | None = None,
    seed: int | None = None,
    progress: Callable[[int, int, CaseResult], None] | None = None,
) -> list[CaseResult]:
    """Check every implemented op of ``backend`` against the reference; one result per (case, dtype, layout)."""
    runs = plan(backend, ops=ops, dtypes=dtypes, size=size, layouts=layouts)
    impl = REGISTRY.load_ops(backend)
    reference = REGISTRY.load_ops(REFERENCE)
    rec = REGISTRY.records[backend]
    assert rec.backend is not None
    dev = device or rec.backend.device_type
    results = []
    for i, (case, dt, lay) in enumerate(runs):
        r = run_case(case, dt, impl, reference, device=dev, layout=lay,
                     seed=None if seed is None else seed + i, prepare_metadata=rec.backend.prepare_metadata)
        results.append(r)
        if progress is not None:
            progress(i + 1, len(runs), r)
    return results


def format_table(results: list[CaseResult], *, only_failures: bool = False) -> str:
    """A per-op summary table (and the failing rows) for terminals and logs."""
    lines = [f"{'op':26} {'runs':>5} {'pass':>5} {'unsup':>5} {'fail':>5} {'max abs err':>12} {'max rel err':>12}"]
    by_op: dict[str, list[CaseResult]] = {}
    for r in results:
        by_op.setdefault(r.op, []).append(r)
    for op, rs in by_op.items():
        count = lambda s, rs=rs: sum(r.status == s for r in rs)  # noqa: E731
        done = [r for r in rs if r.status in ("pass", "fail")]
        lines.append(
            f"{op:26} {len(rs):5d} {count('pass'):5d} {count('unsupported'):5d} "
            f"{count('fail') + count('error'):5d} {max((r.max_abs for r in done), default=0):12.3g} "
            f"{max((r.max_rel for r in done), default=0):12.3g}"
        )
    bad = [r for r in results if not r.ok]
    if bad:
        lines.append("")
        lines.append("failures:")
        for r in bad:
            lines.append(f"  {r.op} [{r.case}, {r.dtype}, {r.layout}, seed {r.seed}]: {r.status}: {r.detail}")
    if only_failures:
        return "\n".join(lines[len(by_op) + 1 :])
    return "\n".join(lines)
