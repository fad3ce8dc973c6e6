"""``lmdeploy serve api_server`` under test: start it, drive it with OpenAI requests, stop it, find orphans.

The server runs in its own process group with a deadline for every step; requests go to 127.0.0.1 only.
:func:`run_load` sends a mixed load (prompt and output lengths, streaming and not, some cancelled midway),
checks that every request that was not cancelled completed with the greedy text the same request gives
alone, and measures time to first token and inter-token latency on the streamed requests.

Command line (``--url`` to load a server that is already running)::

    python -m dlinfer_lmdeploy.testing.serve_load MODEL --device cpu --requests 64
    python -m dlinfer_lmdeploy.testing.serve_load MODEL --device maca --requests 256 --distinct 64 --max-tokens 128 \
        --no-compare --ignore-eos --warmup 64 --deadline 300 --json out.json -- --max-batch-size 128
        # after --: extra lmdeploy serve arguments
    python -m dlinfer_lmdeploy.testing.serve_load --table run1.json run2.json ...   # markdown table of --json files

``--deadline`` bounds the whole run: when it passes, the Python stacks of this process and of every server process
(SIGABRT with ``PYTHONFAULTHANDLER=1``, into the server log) are printed, the server's process group is killed and
the exit status is 124. ``tools/gpu_serve.sh`` runs this on the H200, maca vs LMDeploy's ``cuda``.

Needs the ``serve`` extra of dlinfer-lmdeploy (uvicorn, fastapi, openai, partial_json_parser).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def lmdeploy_command() -> list[str]:
    """The ``lmdeploy`` console script of this interpreter's environment (what a user runs)."""
    script = Path(sys.executable).parent / "lmdeploy"
    if script.exists():
        return [str(script)]
    found = shutil.which("lmdeploy")
    return [found] if found else [sys.executable, "-c", "import sys; from lmdeploy.cli import run; sys.exit(run())"]


@dataclass
class Server:
    """A running ``lmdeploy serve api_server``: its process, port and log file."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    model_name: str
    descendants: set[int] = field(default_factory=set)
    start_s: float | None = None
    """seconds from the start of the process until ``/v1/models`` answered"""
    leftovers: list[str] = field(default_factory=list)
    """processes still running 15 s after the server exited (orphans), which :func:`stop_server` killed"""

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def tree_pids(self) -> set[int]:
        """The server process and its descendants now (remembered for the orphan check)."""
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            pids = {root.pid} | {c.pid for c in root.children(recursive=True)}
        except psutil.NoSuchProcess:
            pids = set()
        self.descendants |= pids
        return pids

    def tree_rss(self) -> int:
        """Resident memory of the server process tree, bytes."""
        import psutil

        total = 0
        for pid in self.tree_pids():
            with contextlib.suppress(psutil.Error):
                total += psutil.Process(pid).memory_info().rss
        return total

    def group_pids(self) -> set[int]:
        """The processes of the server's process group (its pid: it leads its own session), including those that
        outlived their parent and were re-parented (no longer descendants)."""
        import psutil

        pids = set()
        for pid in psutil.pids():
            with contextlib.suppress(OSError):
                if os.getpgid(pid) == self.proc.pid:
                    pids.add(pid)
        return pids

    def alive_descendants(self) -> list[str]:
        """Processes started by the server (descendants seen so far, and its process group now) that are still
        running (zombies excluded), as ``pid cmdline``."""
        import psutil

        alive = []
        for pid in sorted(self.descendants | self.group_pids()):
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{pid} {' '.join(p.cmdline())[:160]}")
        return alive


def http_get(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (127.0.0.1 only)
        return json.loads(r.read())


def start_server(
    model: str | Path,
    device: str = "cpu",
    *,
    log: Path,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    deadline_s: float = 300.0,
    on_spawn: Callable[[Server], None] | None = None,
) -> Server:
    """Start ``lmdeploy serve api_server MODEL --backend pytorch --device DEVICE`` on 127.0.0.1 and wait until
    ``/v1/models`` answers; raises RuntimeError (with the log tail) if it exits or misses the deadline.

    The server runs in its own session (process group = its pid) with ``PYTHONFAULTHANDLER=1`` (SIGABRT prints
    every thread's stack into ``log``) and NVLink multicast off; ``on_spawn`` is called with the server as soon
    as its process exists (a caller's watchdog can then kill it during a start that hangs)."""
    from dlinfer_lmdeploy.testing.child import MULTICAST_OFF

    port = free_port()
    cmd = [
        *lmdeploy_command(),
        "serve",
        "api_server",
        str(model),
        "--backend",
        "pytorch",
        "--device",
        device,
        "--server-name",
        HOST,
        "--server-port",
        str(port),
        *extra_args,
    ]
    log.parent.mkdir(parents=True, exist_ok=True)
    server_env = {**(os.environ if env is None else env), **MULTICAST_OFF, "PYTHONFAULTHANDLER": "1"}
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=server_env, start_new_session=True, stdin=subprocess.DEVNULL
        )
    server = Server(proc=proc, port=port, log=log, model_name=str(model))
    if on_spawn is not None:
        on_spawn(server)
    end = t0 + deadline_s
    while True:
        server.tree_pids()
        if proc.poll() is not None:
            raise RuntimeError(f"lmdeploy serve exited with {proc.returncode} before answering:\n{server.log_tail()}")
        try:
            models = http_get(f"{server.url}/v1/models", timeout=2.0)
            server.model_name = models["data"][0]["id"]
            server.start_s = round(time.monotonic() - t0, 2)
            server.tree_pids()
            return server
        except OSError:
            pass
        if time.monotonic() > end:
            stop_server(server, deadline_s=15)
            raise RuntimeError(f"lmdeploy serve did not answer within {deadline_s:.0f} s:\n{server.log_tail()}")
        time.sleep(1.0)


def stop_server(server: Server, deadline_s: float = 60.0) -> int | None:
    """SIGTERM the server (what Ctrl-C / a service manager does) and wait; SIGKILL its process group after the
    deadline. Returns the exit code of a graceful stop, None when it had to be killed."""
    server.tree_pids()
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = server.proc.wait(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        code = None
    # children get a moment to follow their parent out
    end = time.monotonic() + 15
    while server.alive_descendants() and time.monotonic() < end:
        time.sleep(0.5)
    left = server.alive_descendants()
    if code is None or left:
        if code is not None:
            server.leftovers = left
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.proc.pid, signal.SIGKILL)
        if code is None:
            server.proc.wait(timeout=30)
        end = time.monotonic() + 10
        while server.alive_descendants() and time.monotonic() < end:
            time.sleep(0.2)
    return code


@contextlib.contextmanager
def running_server(model: str | Path, device: str = "cpu", *, log: Path, **kwargs: Any) -> Iterator[Server]:
    server = start_server(model, device, log=log, **kwargs)
    try:
        yield server
    finally:
        stop_server(server)


# ---------------------------------------------------------------------------------------------- the load


@dataclass(frozen=True)
class Request:
    """One OpenAI request of the load; ``cancel_after`` chunks (streaming) or seconds (not streaming)."""

    key: int
    """requests with the same key are the same request (prompt, max_tokens, endpoint)"""
    prompt: str
    max_tokens: int
    chat: bool
    stream: bool
    cancel_after: float | None = None


@dataclass
class Result:
    request: Request
    text: str = ""
    finish_reason: str | None = None
    cancelled: bool = False
    error: str | None = None
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    """gaps between consecutive streamed chunks that carried text"""
    latency_s: float = 0.0
    output_tokens: int | None = None
    """``usage.completion_tokens`` as the server reports it (streamed: its ``include_usage`` chunk)"""
    chunks: int = 0
    """streamed chunks that carried text"""


def make_load(n: int, distinct: int, max_tokens: int, seed: int = 0, cancel_every: int = 8) -> list[Request]:
    """``n`` requests over ``distinct`` different requests (prompt 1-160 characters, 1-``max_tokens`` output
    tokens, completions or chat); half streamed; every ``cancel_every``-th one cancelled midway."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJ.,0123456789"
    bases = []
    for key in range(distinct):
        length = rng.choice([1, 3, 8, 20, 45, 90, 160])
        prompt = "".join(rng.choice(alphabet) for _ in range(length))
        bases.append((key, prompt, rng.randint(1, max_tokens), key % 3 == 0))
    load = []
    for i in range(n):
        key, prompt, tokens, chat = bases[i % distinct]
        stream = (i // distinct) % 2 == 0 if distinct < n else i % 2 == 0
        cancel = None
        if cancel_every and i % cancel_every == cancel_every - 1:
            cancel = 2.0 if stream else 0.3  # after 2 chunks / 0.3 s
        load.append(Request(key, prompt, tokens, chat, stream, cancel))
    rng.shuffle(load)
    return load


async def _one(client: Any, model: str, req: Request, timeout_s: float, ignore_eos: bool) -> Result:
    res = Result(req)
    t0 = time.perf_counter()
    common: dict[str, Any] = {"model": model, "max_tokens": req.max_tokens, "temperature": 0.0, "timeout": timeout_s}
    if ignore_eos:  # LMDeploy's extension: every request generates max_tokens (benchmarks)
        common["extra_body"] = {"ignore_eos": True}
    if req.chat:
        call = client.chat.completions.create
        common["messages"] = [{"role": "user", "content": req.prompt}]
    else:
        call = client.completions.create
        common["prompt"] = req.prompt

    def piece(choice: Any) -> str:
        part = (choice.delta.content if req.stream else choice.message.content) if req.chat else choice.text
        return part or ""

    try:
        if not req.stream:
            task = asyncio.ensure_future(call(**common))
            if req.cancel_after is not None:
                done, _ = await asyncio.wait({task}, timeout=req.cancel_after)
                if not done:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                    res.cancelled = True
                    return res
            out = await task
            res.text = piece(out.choices[0])
            res.finish_reason = out.choices[0].finish_reason
            res.output_tokens = out.usage.completion_tokens if out.usage is not None else None
        else:
            stream = await call(stream=True, stream_options={"include_usage": True}, **common)
            chunks = 0
            last = None
            async for chunk in stream:
                now = time.perf_counter()
                if getattr(chunk, "usage", None) is not None:
                    res.output_tokens = chunk.usage.completion_tokens
                if not chunk.choices:
                    continue
                text = piece(chunk.choices[0])
                if text:
                    if res.ttft_s is None:
                        res.ttft_s = now - t0
                    elif last is not None:
                        res.itl_s.append(now - last)
                    last = now
                    res.text += text
                    chunks += 1
                    res.chunks = chunks
                if chunk.choices[0].finish_reason is not None:
                    res.finish_reason = chunk.choices[0].finish_reason
                if req.cancel_after is not None and chunks >= req.cancel_after:
                    await stream.close()
                    res.cancelled = True
                    break
    except Exception as exc:  # a failed request is a result, reported by check_load
        res.error = f"{type(exc).__name__}: {exc}"
    res.latency_s = time.perf_counter() - t0
    return res


async def _run(
    url: str, model: str, load: Sequence[Request], concurrency: int, timeout_s: float, ignore_eos: bool
) -> list[Result]:
    from openai import AsyncOpenAI

    sem = asyncio.Semaphore(concurrency)
    async with AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0) as client:

        async def limited(req: Request) -> Result:
            async with sem:
                return await _one(client, model, req, timeout_s, ignore_eos)

        return list(await asyncio.gather(*(limited(r) for r in load)))


def send(
    url: str,
    model: str,
    load: Sequence[Request],
    concurrency: int = 64,
    timeout_s: float = 300.0,
    ignore_eos: bool = False,
) -> list[Result]:
    """Send ``load`` with at most ``concurrency`` requests in flight; results in the order of ``load``."""
    return asyncio.run(_run(url, model, load, concurrency, timeout_s, ignore_eos))


def alone(
    url: str, model: str, load: Sequence[Request], timeout_s: float = 300.0, ignore_eos: bool = False
) -> dict[int, str]:
    """The greedy text of each distinct request of ``load``, sent one at a time, not streamed, not cancelled."""
    firsts: dict[int, Request] = {}
    for r in load:
        firsts.setdefault(r.key, Request(r.key, r.prompt, r.max_tokens, r.chat, stream=False))
    out = send(url, model, list(firsts.values()), concurrency=1, timeout_s=timeout_s, ignore_eos=ignore_eos)
    for res in out:
        if res.error:
            raise RuntimeError(f"request {res.request.key} alone failed: {res.error}")
    return {res.request.key: res.text for res in out}


def check_load(results: Sequence[Result], expected: dict[int, str]) -> list[str]:
    """Problems of a load run: errors, requests that did not finish, greedy texts that differ from alone."""
    problems = []
    for res in results:
        r = res.request
        if res.error:
            problems.append(f"request {r.key} (stream={r.stream}, chat={r.chat}) failed: {res.error}")
        elif res.cancelled:
            # a cancelled stream got a prefix of the text before it was closed
            if r.stream and not expected[r.key].startswith(res.text):
                problems.append(f"cancelled request {r.key}: {res.text!r} is not a prefix of {expected[r.key]!r}")
        elif res.finish_reason not in ("length", "stop"):
            problems.append(f"request {r.key}: finish_reason {res.finish_reason!r}")
        elif res.text != expected[r.key]:
            problems.append(f"request {r.key} (stream={r.stream}): {res.text!r} != alone {expected[r.key]!r}")
    return problems


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _ms(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile of ``values`` (seconds) in ms; the median for q=0.5."""
    if not values:
        return None
    x = statistics.median(values) if q == 0.5 else _pct(values, q)
    return round(1000 * x, 2)  # type: ignore[operator]


def summarize(results: Sequence[Result], wall_s: float) -> dict[str, Any]:
    """Figures of one load over ``wall_s`` seconds, from the requests that completed (not cancelled, no error):
    requests/s; output tokens/s (the server's ``usage.completion_tokens``); p50/p99 of the time to first token
    and of the inter-token latency (gaps between streamed chunks with text; ``chunks_per_token`` says how many
    tokens a chunk held) on the streamed requests; TPOT, each streamed request's (latency - TTFT) / (tokens - 1)."""
    done = [r for r in results if not r.cancelled and not r.error]
    streamed = [r for r in done if r.request.stream]
    ttft = [r.ttft_s for r in streamed if r.ttft_s is not None]
    itl = [x for r in streamed for x in r.itl_s]
    tpot = [(r.latency_s - r.ttft_s) / (r.output_tokens - 1) for r in streamed
            if r.ttft_s is not None and r.output_tokens is not None and r.output_tokens > 1]
    counted = [r.output_tokens for r in done if r.output_tokens is not None]
    tokens = sum(counted)
    stream_tokens = sum(r.output_tokens or 0 for r in streamed)
    return {
        "requests": len(results),
        "completed": len(done),
        "streamed": len(streamed),
        "cancelled": sum(r.cancelled for r in results),
        "errors": sum(r.error is not None for r in results),
        "wall_s": round(wall_s, 3),
        "requests_per_s": round(len(done) / wall_s, 3) if wall_s else None,
        "output_tokens": tokens if len(counted) == len(done) else None,
        "output_tok_per_s": round(tokens / wall_s, 1) if wall_s and len(counted) == len(done) else None,
        "ttft_p50_ms": _ms(ttft, 0.5),
        "ttft_p99_ms": _ms(ttft, 0.99),
        "itl_p50_ms": _ms(itl, 0.5),
        "itl_p99_ms": _ms(itl, 0.99),
        "tpot_p50_ms": _ms(tpot, 0.5),
        "tpot_p99_ms": _ms(tpot, 0.99),
        "chunks_per_token": round(sum(r.chunks for r in streamed) / stream_tokens, 3) if stream_tokens else None,
    }


def run_load(
    url: str,
    model: str,
    n: int = 64,
    distinct: int = 16,
    max_tokens: int = 24,
    seed: int = 0,
    timeout_s: float = 300.0,
    compare: bool = True,
    ignore_eos: bool = False,
    *,
    concurrency: int | None = None,
    cancel_every: int = 8,
    warmup: int = 0,
) -> tuple[list[str], dict[str, Any]]:
    """The whole check against a running server: alone, then all ``n`` at once (at most ``concurrency`` in
    flight; default all), then ``/v1/models`` and one request alone again. Returns (problems, summary).
    ``compare=False`` (benchmarks on devices whose greedy output may depend on the batch, e.g. bf16 kernels)
    skips the alone runs and reports errors and unfinished requests only. ``warmup`` > 0: before the timed load,
    its first ``warmup`` requests are sent at once, not streamed and not cancelled (kernel JIT, device-graph
    capture up to that batch size and other first-use costs stay out of the figures); their errors are problems
    too."""
    load = make_load(n, distinct, max_tokens, seed, cancel_every=cancel_every)
    problems: list[str] = []
    if warmup > 0:
        warm = [Request(r.key, r.prompt, r.max_tokens, r.chat, stream=False) for r in load[:warmup]]
        for res in send(url, model, warm, concurrency=len(warm), timeout_s=timeout_s, ignore_eos=ignore_eos):
            if res.error:
                problems.append(f"warm-up request {res.request.key} failed: {res.error}")
    expected = alone(url, model, load, timeout_s, ignore_eos) if compare else None
    cpu0, t0 = time.process_time(), time.perf_counter()
    results = send(url, model, load, concurrency=concurrency or n, timeout_s=timeout_s, ignore_eos=ignore_eos)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if expected is not None:
        problems += check_load(results, expected)
    else:
        problems += [f"request {r.request.key} failed: {r.error}" for r in results if r.error]
        problems += [f"request {r.request.key}: finish_reason {r.finish_reason!r}" for r in results
                     if not r.error and not r.cancelled and r.finish_reason not in ("length", "stop")]
    try:
        http_get(f"{url}/v1/models")
    except OSError as exc:
        problems.append(f"/v1/models does not answer after the load: {exc}")
    if expected is not None:
        again = alone(url, model, load[:1], timeout_s, ignore_eos)
        if again[load[0].key] != expected[load[0].key]:
            problems.append(f"after the load, request {load[0].key} alone gives {again[load[0].key]!r}")
    summary = summarize(results, wall)
    summary["client_cpu_s"] = round(cpu, 2)  # close to wall_s: the client itself limited the figures
    return problems, summary


TABLE_COLUMNS = (
    ("requests_per_s", "req/s"),
    ("output_tok_per_s", "output tok/s"),
    ("ttft_p50_ms", "TTFT p50 ms"),
    ("ttft_p99_ms", "TTFT p99 ms"),
    ("itl_p50_ms", "ITL p50 ms"),
    ("itl_p99_ms", "ITL p99 ms"),
    ("tpot_p50_ms", "TPOT p50 ms"),
)
"""(summary key, column title) of :func:`table`'s figures"""


def table(runs: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """Markdown of ``(name, --json content)`` runs: one row per run (figures, completed/cancelled/errors, server
    start, client CPU), then per device the median over its runs, and the ratio of the first two devices' medians
    (first / second, as they appear)."""
    head = ["run", "device", *(t for _, t in TABLE_COLUMNS), "completed / cancelled / errors", "server start s",
            "client CPU s / wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    per_device: dict[str, list[dict[str, Any]]] = {}
    for name, run in runs:
        s = run.get("summary", {})
        device = s.get("device", "?")
        if "completed" not in s:
            why = s.get("error") or "; ".join(run.get("problems", []))[:200] or "no result"
            lines.append(f"| {name} | {device} | failed: {why} |" + " |" * (len(head) - 3))
            continue
        per_device.setdefault(device, []).append(s)
        cells = [str(s.get(k)) for k, _ in TABLE_COLUMNS]
        lines.append(
            f"| {name} | {device} | " + " | ".join(cells) + f" | {s['completed']} / {s['cancelled']} / {s['errors']}"
            f" | {s.get('server_start_s')} | {s.get('client_cpu_s')} / {s.get('wall_s')} |"
        )
    if not per_device:
        return "\n".join(lines)
    medians: dict[str, dict[str, float | None]] = {}
    lines += ["", "| median over runs | runs | " + " | ".join(t for _, t in TABLE_COLUMNS) + " |",
              "|---|---|" + "---|" * len(TABLE_COLUMNS)]
    for device, ss in per_device.items():
        med: dict[str, float | None] = {}
        for k, _ in TABLE_COLUMNS:
            vals = [float(x[k]) for x in ss if x.get(k) is not None]
            med[k] = round(statistics.median(vals), 2) if vals else None
        medians[device] = med
        lines.append(f"| {device} | {len(ss)} | " + " | ".join(str(med[k]) for k, _ in TABLE_COLUMNS) + " |")
    if len(medians) >= 2:
        a, b = list(medians)[:2]
        ratio = [f"{medians[a][k] / medians[b][k]:.3f}" if medians[a][k] and medians[b][k] else "" for k, _ in
                 TABLE_COLUMNS]
        lines.append(f"| {a} / {b} | | " + " | ".join(ratio) + " |")
    return "\n".join(lines)


def _watchdog(
    deadline_s: float, servers: list[Server], on_fire: Callable[[str], None]
) -> tuple[threading.Timer, threading.Event]:
    """After ``deadline_s``: print this process's stacks, SIGABRT every server process (each prints its stacks
    into the server log), kill the servers' process groups, print the log tails, call ``on_fire`` and exit 124.
    Returns the timer and the event it sets when it fires (the main thread then waits for the exit)."""
    from dlinfer_lmdeploy.testing.child import dump_stacks_and_kill

    fired = threading.Event()

    def fire() -> None:
        fired.set()
        msg = f"serve_load: the deadline of {deadline_s:.0f} s passed"
        print(f"{msg}; Python stacks of the client:", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        for srv in servers:
            dump_stacks_and_kill(srv.proc.pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(srv.proc.pid, signal.SIGKILL)
            print(f"--- server log tail ({srv.log}):\n{srv.log_tail(20000)}", file=sys.stderr, flush=True)
        on_fire(msg)
        sys.stderr.flush()
        os._exit(124)

    timer = threading.Timer(deadline_s, fire)
    timer.daemon = True
    timer.start()
    return timer, fired


def main(argv: Sequence[str] | None = None) -> int:
    doc = (__doc__ or "").split("\n")[0]
    ap = argparse.ArgumentParser(prog="python -m dlinfer_lmdeploy.testing.serve_load", description=doc)
    ap.add_argument("model", nargs="?", help="model directory (or the served model name with --url)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--url", help="load a server already running at this URL instead of starting one")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--distinct", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concurrency", type=int, help="requests in flight at most (default: all at once)")
    ap.add_argument("--cancel-every", type=int, default=8, help="every N-th request is cancelled midway (0: none)")
    ap.add_argument("--warmup", type=int, default=0, help="first send N of the requests at once, not timed")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    ap.add_argument("--start-deadline", type=float, default=300.0, help="seconds for the server to answer")
    ap.add_argument("--deadline", type=float, default=0.0,
                    help="seconds for the whole run; then stacks of every process, kill, exit status 124")
    ap.add_argument("--no-compare", action="store_true", help="skip the greedy == alone comparison (benchmarks)")
    ap.add_argument("--ignore-eos", action="store_true", help="every request generates its max_tokens tokens")
    ap.add_argument("--log", type=Path, default=Path("serve_load.log"), help="the server's output")
    ap.add_argument("--pid-file", type=Path, help="write the server's pid (its process group) here")
    ap.add_argument("--json", type=Path, help="write the summary and problems here")
    ap.add_argument("--table", nargs="+", type=Path, metavar="JSON", help="print a markdown table of --json files")
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = ap.parse_args(argv[:cut])
    extra = argv[cut + 1 :]  # after --: extra `lmdeploy serve api_server` arguments
    if args.table:
        missing: dict[str, Any] = {"summary": {}, "problems": ["no result file"]}
        print(table([(p.stem, json.loads(p.read_text()) if p.exists() else missing) for p in args.table]))
        return 0
    if not args.model:
        ap.error("the model (or with --url the served model name) is required")

    config = {k: getattr(args, k) for k in ("requests", "distinct", "max_tokens", "seed", "concurrency",
                                            "cancel_every", "warmup", "ignore_eos")}
    result: dict[str, Any] = {"summary": {"device": args.device}, "problems": [], "config": config,
                              "server_args": extra, "model": str(args.model)}

    def write() -> None:
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))

    servers: list[Server] = []

    def spawned(srv: Server) -> None:
        servers.append(srv)
        if args.pid_file:
            args.pid_file.write_text(str(srv.proc.pid))

    def deadline_passed(msg: str) -> None:
        result["problems"].append(msg)
        result["summary"]["error"] = msg
        write()

    watchdog, fired = _watchdog(args.deadline, servers, deadline_passed) if args.deadline > 0 else (None, None)
    problems: list[str] = []
    summary: dict[str, Any] = {}
    try:
        if args.url:
            url, model = args.url.rstrip("/"), args.model
        else:
            server = start_server(args.model, args.device, log=args.log, extra_args=extra,
                                  deadline_s=args.start_deadline, on_spawn=spawned)
            url, model = server.url, server.model_name
        problems, summary = run_load(url, model, args.requests, args.distinct, args.max_tokens, args.seed,
                                     args.timeout, compare=not args.no_compare, ignore_eos=args.ignore_eos,
                                     concurrency=args.concurrency, cancel_every=args.cancel_every,
                                     warmup=args.warmup)
        if servers:
            summary["server_start_s"] = servers[0].start_s
    except RuntimeError as exc:  # the server did not start or died, or a request alone failed
        problems.append(str(exc)[-6000:])
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        errors = [ln for ln in lines[1:] if "Error" in ln or "Exception" in ln or "error:" in ln]
        last = (errors or lines[1:] or [""])[-1]
        summary["error"] = (lines[0][:200] + (f" ... {last[-240:]}" if last else "")) if lines else "?"
    finally:
        for srv in servers:  # graceful stop (SIGTERM), then the process group is killed if anything is left
            code = stop_server(srv)
            if srv.start_s is not None:  # it had answered: how did it stop
                summary["server_stop"] = "graceful" if code is not None else "killed after the stop deadline"
            if srv.leftovers or srv.alive_descendants():
                problems.append(f"processes left after the server stopped: {srv.leftovers or srv.alive_descendants()}")
        if watchdog is not None:
            watchdog.cancel()
    if watchdog is not None and fired is not None and fired.is_set():
        watchdog.join(300)  # what failed here is the watchdog's kill: it reports and exits 124
    result["summary"] = {"device": args.device, **summary}
    result["problems"] = problems
    print(json.dumps(result["summary"], indent=2))
    for p in problems:
        print("PROBLEM:", p)
    write()
    return 1 if problems else 0


__all__ = [
    "Request", "Result", "Server", "make_load", "run_load", "running_server", "start_server", "summarize", "table",
]

if __name__ == "__main__":
    sys.exit(main())
