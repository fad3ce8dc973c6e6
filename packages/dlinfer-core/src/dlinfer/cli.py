"""The ``dlinfer`` command: ``info``, ``check`` and ``bench``."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from dlinfer.errors import DlinferError
from dlinfer.plugin import Backend
from dlinfer.registry import REFERENCE, REGISTRY
from dlinfer.spec import API_VERSION, FLOAT_DTYPES, SPECS


def _dtypes(names: str | None) -> list[torch.dtype] | None:
    """``--dtypes float16,bfloat16`` -> dtypes; an unknown name raises a DlinferError listing the valid ones."""
    if not names:
        return None
    known = {str(d).replace("torch.", ""): d for d in FLOAT_DTYPES}
    out = []
    for name in (n.strip() for n in names.split(",")):
        if name not in known:
            raise DlinferError(f"--dtypes: unknown dtype {name!r}; choose from {', '.join(known)}")
        out.append(known[name])
    return out


def _ops(names: list[str] | None) -> list[str] | None:
    """``--op`` values, each checked against the spec (a typo raises a DlinferError listing the known ops)."""
    for name in names or ():
        if name not in SPECS:
            raise DlinferError(f"--op: unknown op {name!r}; known ops: {', '.join(SPECS)}")
    return names


def cmd_info(args: argparse.Namespace) -> int:
    """Discovered backends, versions, availability (and why not), implemented ops and load errors;
    with ``--collect-env`` first the environment a bug report needs."""
    from dlinfer.diagnose import collect_env, format_env, unavailable_reason

    if getattr(args, "collect_env", False):
        print(format_env(collect_env()))
    REGISTRY.discover()
    print(f"dlinfer-core API {API_VERSION}, torch {torch.__version__}")
    wn = max([len("backend"), *map(len, REGISTRY.records)])
    wd = max([len("distribution"), *(len(f"{r.dist} {r.version}") for r in REGISTRY.records.values())])
    print(f"{'backend':{wn}} {'distribution':{wd}} {'device':7} {'layout':6} {'available':9} {'ops':>7}  notes")
    for name, rec in REGISTRY.records.items():
        b = rec.backend
        assert b is not None
        avail = REGISTRY.available(name)
        ops = "-"
        notes = rec.probe_error or b.description
        if not avail:
            notes = f"{b.description}; NOT AVAILABLE: {unavailable_reason(REGISTRY, name)}"
        if avail:
            try:
                implemented = REGISTRY.load_ops(name)
                ops = f"{len(implemented)}/{len(SPECS)}"
                missing = [o for o in SPECS if o not in implemented]
                if missing:
                    notes = (notes + "; " if notes else "") + "falls back to reference for: " + ", ".join(missing)
            except Exception as exc:  # noqa: BLE001 - reported in the table
                ops, notes = "error", str(exc)
        print(f"{name:{wn}} {rec.dist + ' ' + rec.version:{wd}} {b.device_type:7} {b.kv_layout:6} "
              f"{'yes' if avail else 'no':9} {ops:>7}  {notes}")
    print("\nattention capabilities (checked when an engine is built):")
    for name, rec in REGISTRY.records.items():
        assert rec.backend is not None
        b = rec.backend
        dtypes = ",".join(str(d).replace("torch.", "") for d in b.dtypes)
        print(f"  {name + ':':{wn + 1}} {b.capabilities.summary()}; dtypes {dtypes}")
    print("\ngraph mode (decode steps captured and replayed by a framework adaptor):")
    for name, rec in REGISTRY.records.items():
        assert rec.backend is not None
        print(f"  {name + ':':{wn + 1}} {graph_summary(rec.backend)}")
    extras = {name: rec.backend.extras for name, rec in REGISTRY.records.items() if rec.backend and rec.backend.extras}
    if extras:
        print("\ndeclared extras (display only):")
        for name, items in extras.items():
            shown = ", ".join(f"{k}={'<lazy>' if callable(v) else v}" for k, v in items.items())
            print(f"  {name + ':':{wn + 1}} {shown}")
    if REGISTRY.load_errors:
        print("\nplugins that failed to load:")
        for rec in REGISTRY.load_errors:
            print(f"  {rec.plugin} ({rec.dist} {rec.version}): {rec.error}")
    try:
        from dlinfer.dispatch import current

        with warnings.catch_warnings():  # the fallbacks are listed in the table above
            warnings.simplefilter("ignore", RuntimeWarning)
            print(f"\nselected backend: {current().name}")
    except Exception as exc:  # noqa: BLE001
        print(f"\nselected backend: none ({exc})")
        return 1
    return 0


def graph_summary(backend: Backend) -> str:
    """One line on a backend's ``DeviceGraph``: whether it has one, and how a replay's inputs are refilled."""
    graph = backend.graph
    if graph is None:
        return "no device graph (decode runs eagerly)"
    refill = "one kernel" if graph.fill_decode_inputs is not None else "torch ops"
    host = "; host lengths updated before each replay" if graph.update_before_replay is not None else ""
    return f"device graphs; decode inputs refilled by {refill}{host}"


def _progress(done: int, total: int, result: object) -> None:
    if sys.stderr.isatty():
        print(f"\r  {done}/{total} cases", end="" if done < total else "\n", file=sys.stderr, flush=True)
    elif done == total or done % 50 == 0:
        print(f"  {done}/{total} cases", file=sys.stderr, flush=True)


def _backend_name(name: str) -> str:
    """Resolve ``--backend``: an unknown name or a plugin that failed to load raises a DlinferError."""
    rec = REGISTRY.select(name)
    assert rec.backend is not None
    return rec.backend.name


def cmd_check(args: argparse.Namespace) -> int:
    """Run the conformance kit and print a pass/fail table."""
    from dlinfer.dispatch import activate
    from dlinfer.testing import format_table, run_conformance

    ops, dtypes = _ops(args.op), _dtypes(args.dtypes)
    name = _backend_name(args.backend) if args.backend else activate().name
    if name == REFERENCE:  # against itself it could not fail: the independent float64 oracles instead
        from dlinfer.testing.oracles import run_against_oracles, uncovered

        print(f"conformance of '{name}' against independent float64 oracles (dlinfer.testing.oracles; "
              f"{args.size} cases)", flush=True)
        results = run_against_oracles(ops=ops, dtypes=dtypes, size=args.size, device=args.device, seed=args.seed,
                                      progress=_progress)
        left = uncovered(ops)
        if left:
            print(f"no oracle (not checked here; the reference's own tests cover them): {', '.join(left)}")
    else:
        print(f"conformance of '{name}' against '{REFERENCE}' ({args.size} cases)", flush=True)
        results = run_conformance(name, ops=ops, dtypes=dtypes, size=args.size, device=args.device,
                                  seed=args.seed, progress=_progress)
    print(format_table(results))
    print("\n" + summary_line(results))
    return 1 if any(not r.ok for r in results) else 0


def summary_line(results: list[Any]) -> str:
    """``"N/M runs conform (P passed, U refused as unsupported)[, F FAILED]"``: a refusal (``NotImplementedError``
    naming the case's option) conforms, but is counted apart from the runs whose outputs were checked."""
    failed = sum(not r.ok for r in results)
    refused = sum(r.status == "unsupported" for r in results)
    line = f"{len(results) - failed}/{len(results)} runs conform ({len(results) - failed - refused} passed"
    line += f", {refused} refused as unsupported)" if refused else ")"
    return line + (f", {failed} FAILED" if failed else "")


def cmd_bench(args: argparse.Namespace) -> int:
    """Per-op timing and the dispatch overhead of dlinfer.ops.X versus calling the implementation."""
    from dlinfer.bench import run_bench

    ops = _ops(args.op)
    name = _backend_name(args.backend) if args.backend else None
    return run_bench(name, ops=ops, device=args.device, size=args.size)


def build_parser() -> argparse.ArgumentParser:
    from dlinfer import __version__

    p = argparse.ArgumentParser(prog="dlinfer", description="dlinfer backends: inspect, check and benchmark")
    p.add_argument("--version", action="version", version=f"dlinfer {__version__} (op API {API_VERSION})")
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="list backends, versions, availability (and why not), ops and load errors")
    info.add_argument("--collect-env", action="store_true",
                      help="first print what a bug report needs (versions, vendor stacks, device nodes, env vars)")
    info.set_defaults(func=cmd_info)
    for name, func, help_ in (("check", cmd_check, "run the conformance kit against the reference"),
                              ("bench", cmd_bench, "time ops and the dispatch overhead")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--backend", help="backend name (default: the selected one; check compares the reference "
                                         "backend with float64 oracles, any other backend with the reference)")
        s.add_argument("--op", action="append", help="only this op (repeatable)")
        s.add_argument("--device", help="torch device (default: the backend's)")
        s.add_argument("--size", choices=("small", "large"), default="small")
        if name == "check":
            s.add_argument("--dtypes", help="comma-separated, e.g. float16,bfloat16")
            s.add_argument("--seed", type=int, help="first seed (default: random)")
        s.set_defaults(func=func)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DlinferError as exc:  # unknown backend, broken plugin, strict mode: a message, not a traceback
        print(f"dlinfer {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
