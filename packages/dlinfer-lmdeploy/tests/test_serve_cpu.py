"""``lmdeploy serve api_server <tiny model> --backend pytorch --device cpu`` as a user runs it: no extra flags.

One real server (a subprocess on 127.0.0.1, its own process group, deadlines everywhere) serves the module:
OpenAI endpoints (models, completions, chat, streaming), the small load test (64 concurrent requests, mixed
lengths, streamed and not, some cancelled; each greedy text equals the same request alone), the host memory
the CPU device let LMDeploy plan with, then a graceful SIGTERM that leaves no process behind.
Needs the ``serve`` extra (installed by the CI ``tests`` session).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

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


def test_graceful_shutdown_leaves_no_process(server: serve_load.Server) -> None:
    pids = server.tree_pids()
    assert len(pids) >= 2, "the server runs its engine in a child process"
    code = serve_load.stop_server(server, deadline_s=60)
    assert code is not None, f"SIGTERM did not stop the server within 60 s:\n{server.log_tail()}"
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
