"""``lmdeploy serve api_server <tiny model> --backend pytorch --device cpu`` as a user runs it: no extra flags.

One real server (a subprocess on 127.0.0.1, its own process group, deadlines everywhere) serves the module:
OpenAI endpoints (models, completions, chat, streaming), the small load test (64 concurrent requests, mixed
lengths, streamed and not, some cancelled; each greedy text equals the same request alone), the host memory
the CPU device let LMDeploy plan with, then a graceful SIGTERM that leaves no process behind.
Needs the ``serve`` extra (installed by the CI ``tests`` session).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("uvicorn", reason="needs dlinfer-lmdeploy[serve]")
pytest.importorskip("fastapi", reason="needs dlinfer-lmdeploy[serve]")
pytest.importorskip("openai", reason="needs dlinfer-lmdeploy[serve]")
pytest.importorskip("partial_json_parser", reason="needs dlinfer-lmdeploy[serve]")

from dlinfer_lmdeploy import cpu_device  # noqa: E402
from dlinfer_lmdeploy.testing import serve_load  # noqa: E402

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[serve_load.Server]:  # type: ignore[no-untyped-def]
    model = tiny_model("llama")
    env = {k: v for k, v in os.environ.items() if k != cpu_device.HOST_BUDGET_ENV}
    log = tmp_path_factory.mktemp("serve") / "server.log"
    srv = serve_load.start_server(model, "cpu", log=log, env=env, deadline_s=400)
    yield srv
    serve_load.stop_server(srv, deadline_s=20)


def _client(server: serve_load.Server):  # type: ignore[no-untyped-def]
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=180)


def test_openai_endpoints(server: serve_load.Server) -> None:
    client = _client(server)
    assert [m.id for m in client.models.list().data] == [server.model_name]
    prompt = "the reference backend"
    out = client.completions.create(model=server.model_name, prompt=prompt, max_tokens=12, temperature=0)
    text = out.choices[0].text
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 12
    assert out.usage.prompt_tokens >= len(prompt)  # a character tokenizer
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=server.model_name, prompt=prompt, max_tokens=12, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == text
    messages = [{"role": "user", "content": "hello dlinfer"}]
    chat = client.chat.completions.create(model=server.model_name, messages=messages, max_tokens=10, temperature=0)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens == 10
    chunks = client.chat.completions.create(
        model=server.model_name, messages=messages, max_tokens=10, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
    other = client.completions.create(model=server.model_name, prompt="zz", max_tokens=12, temperature=0)
    assert other.choices[0].text != text  # the output depends on the prompt (not a constant stand-in)


def test_kv_budget_bounded(server: serve_load.Server) -> None:
    """The CPU device offers LMDeploy a bounded budget, not 80 % of the host's free memory."""
    import psutil

    budget = cpu_device.default_host_budget(int(psutil.virtual_memory().total))
    rss = server.tree_rss()
    assert rss < budget + (3 << 30), f"server tree holds {rss / 2**30:.2f} GiB, budget {budget / 2**30:.2f} GiB"


def test_load_64_concurrent(server: serve_load.Server) -> None:
    t0 = time.monotonic()
    problems, summary = serve_load.run_load(server.url, server.model_name, n=64, distinct=16, max_tokens=16)
    assert problems == [], problems
    assert summary["completed"] + summary["cancelled"] == 64 and summary["errors"] == 0
    assert summary["cancelled"] >= 1
    assert time.monotonic() - t0 < 300


def test_token_counts_and_timings(server: serve_load.Server) -> None:
    """The figures' inputs: with ignore_eos every request reports exactly its max_tokens as usage (streamed: the
    include_usage chunk), streamed requests get a first-token time within their latency and one gap per chunk."""
    load = [
        serve_load.Request(key, prompt, max_tokens, chat, stream)
        for key, (prompt, max_tokens, chat, stream) in enumerate(
            [("abc", 5, False, True), ("hello there", 7, True, True), ("x", 6, False, False), ("yz", 9, True, False)]
        )
    ]
    results = serve_load.send(server.url, server.model_name, load, concurrency=4, timeout_s=180, ignore_eos=True)
    for res in results:
        r = res.request
        assert res.error is None and res.finish_reason == "length", (r, res.error)
        assert res.output_tokens == r.max_tokens, (r, res.output_tokens)
        if r.stream:
            assert res.ttft_s is not None and 0 < res.ttft_s <= res.latency_s
            assert res.chunks >= 1 and len(res.itl_s) == res.chunks - 1
        else:
            assert res.ttft_s is None and res.chunks == 0


def test_graceful_shutdown_leaves_no_process(server: serve_load.Server) -> None:
    pids = server.tree_pids()
    assert len(pids) >= 2, "the server runs its engine in a child process"
    code = serve_load.stop_server(server, deadline_s=60)
    assert code is not None, f"SIGTERM did not stop the server within 60 s:\n{server.log_tail()}"
    assert server.leftovers == [], f"orphans (killed by stop_server): {server.leftovers}"
    assert server.alive_descendants() == []
    assert "Application shutdown complete" in server.log_tail(20000)


def test_load_check_can_fail() -> None:
    """check_load reports a text that differs from alone, an error and an unfinished request."""
    load = serve_load.make_load(8, 4, 8, seed=1, cancel_every=0)
    expected = {r.key: f"text{r.key}" for r in load}
    results = [serve_load.Result(r, text=expected[r.key], finish_reason="length") for r in load]
    assert serve_load.check_load(results, expected) == []
    results[0].text += "x"
    results[1].error = "ReadTimeout"
    results[2].finish_reason = None
    assert len(serve_load.check_load(results, expected)) == 3


def _result(stream: bool, ttft: float | None, latency: float, tokens: int | None, **kw: object) -> serve_load.Result:
    req = serve_load.Request(0, "p", 8, chat=False, stream=stream)
    return serve_load.Result(req, finish_reason="length", ttft_s=ttft, latency_s=latency, output_tokens=tokens,
                             **kw)  # type: ignore[arg-type]


def test_summarize_figures() -> None:
    """Requests/s and tokens/s count completed requests only; TTFT/ITL/TPOT come from the streamed ones."""
    results = [
        _result(True, 0.5, 2.5, 5, itl_s=[0.4, 0.6, 0.5, 0.5], chunks=5),
        _result(True, 1.0, 4.0, 4, itl_s=[1.0, 1.0, 1.0], chunks=4),
        _result(False, None, 3.0, 8),
        _result(True, 0.2, 0.3, None, cancelled=True),
        _result(False, None, 1.0, None, error="ReadTimeout"),
    ]
    s = serve_load.summarize(results, wall_s=5.0)
    assert (s["completed"], s["streamed"], s["cancelled"], s["errors"]) == (3, 2, 1, 1)
    assert s["requests_per_s"] == 0.6 and s["output_tokens"] == 17 and s["output_tok_per_s"] == 3.4
    assert s["ttft_p50_ms"] == 750.0 and s["ttft_p99_ms"] == 1000.0
    assert s["itl_p50_ms"] == 600.0 and s["itl_p99_ms"] == 1000.0  # gaps 0.4 0.5 0.5 0.6 1 1 1
    assert s["tpot_p50_ms"] == 750.0  # (2.5 - 0.5) / 4 and (4.0 - 1.0) / 3
    assert s["chunks_per_token"] == 1.0
    results[2].output_tokens = None  # a completed request without usage: no token figures rather than wrong ones
    assert serve_load.summarize(results, wall_s=5.0)["output_tok_per_s"] is None


def test_table_medians_and_ratio() -> None:
    def run(device: str, rps: float, ttft: float) -> dict[str, object]:
        return {"summary": {"device": device, "completed": 10, "cancelled": 0, "errors": 0, "requests_per_s": rps,
                            "ttft_p50_ms": ttft}, "problems": []}

    runs = [("1", run("maca", 10.0, 50.0)), ("2", run("cuda", 8.0, 40.0)), ("3", run("cuda", 12.0, 60.0)),
            ("4", run("maca", 14.0, 70.0)), ("5", {"summary": {"device": "maca", "error": "boom"}, "problems": []})]
    text = serve_load.table(runs)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in text.splitlines()
            if line.startswith("| ")}
    assert rows["maca"][:2] == ["2", "12.0"] and rows["maca"][3] == "60.0"  # runs, req/s, TTFT p50
    assert rows["cuda"][:2] == ["2", "10.0"] and rows["cuda"][3] == "50.0"
    assert rows["maca / cuda"][1] == "1.200" and rows["maca / cuda"][3] == "1.200"
    assert "failed: boom" in rows["5"][1]


@pytest.mark.timeout(120)
def test_deadline_ends_a_hung_run_with_stacks(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """--deadline during the server's start: the client's and the server's Python stacks are printed, the server's
    process group is gone, the JSON says why, the exit status is 124."""
    import psutil

    out = tmp_path / "run.json"
    pid_file = tmp_path / "server.pid"
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "dlinfer_lmdeploy.testing.serve_load", str(tiny_model("llama")), "--device", "cpu",
           "--deadline", "3", "--log", str(log), "--json", str(out), "--pid-file", str(pid_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 124, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Python stacks of the client" in proc.stderr and "most recent call first" in proc.stderr
    assert "Fatal Python error: Aborted" in log.read_text(errors="replace")  # the server's faulthandler
    pgid = int(pid_file.read_text())
    left = [p.pid for p in psutil.process_iter() if _pgid(p.pid) == pgid]
    assert left == [], f"server processes left: {left}"
    assert "deadline of 3 s passed" in json.loads(out.read_text())["summary"]["error"]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None
