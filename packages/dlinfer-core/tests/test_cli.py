"""The ``dlinfer`` command and the pytest plugin, run as subprocesses against real third-party plugins.

All commands start at once (in threads) so that their interpreter start-ups overlap.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from plugin_fixtures import BROKEN_AT_DISCOVERY, PLUGINS, dist_name, plugin_env, register_command

from dlinfer.cli import main
from dlinfer.spec import SPECS
from dlinfer.testing import cases_for

GOOD_OPS = ("rms_norm", "silu_and_mul")
SCRIPT = Path(sys.executable).with_name("dlinfer")
DLINFER = [str(SCRIPT)] if SCRIPT.exists() else ["-m", "dlinfer"]  # the console script, else python -m
PYTEST = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "dlinfer.testing.pytest_plugin"]

COMMANDS = {
    "info": DLINFER + ["info"],
    "check-good": ["-m", "dlinfer", "check", "--backend", "goodcpu", "--seed", "1"],
    "check-wrong": ["-m", "dlinfer", "check", "--backend", "wrongcpu", "--seed", "1"],
    "bench": ["-m", "dlinfer", "bench", "--op", "rms_norm"],
    "pytest-good": PYTEST + ["--dlinfer-backend=goodcpu"],
}


for _name, _args in COMMANDS.items():
    register_command(_name, _args)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    env = plugin_env(tmp_path_factory)
    return {name: env.command(name) for name in COMMANDS}


def _show(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def _rows(stdout: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in stdout.splitlines() if line.strip()}


def test_info_lists_backends_versions_availability_and_ops(runs):
    proc = runs["info"]
    assert proc.returncode == 0, _show(proc)
    rows = _rows(proc.stdout)
    n = len(SPECS)
    assert rows["reference"][:7] == ["reference", "dlinfer-core", rows["reference"][2], "cpu", "NHD", "yes",
                                     f"{n}/{n}"]
    assert rows["goodcpu"][:7] == ["goodcpu", "dlinfer-test-goodcpu", "1.2.3", "cpu", "HND", "yes", f"2/{n}"]
    assert "third-party test plugin; falls back to reference for: add_rms_norm" in proc.stdout
    assert rows["twincpu"][:7] == ["twincpu", "dlinfer-test-twincpu", "0.3.0", "cpu", "NHD", "no", "-"]
    assert rows["badsig"][3] == "fakedev2"
    assert "selected backend: goodcpu" in proc.stdout
    assert "RuntimeWarning" not in proc.stderr  # fallbacks are in the table, not repeated as warnings
    caps = proc.stdout.split("attention capabilities (checked when an engine is built):")[1]
    cap_rows = _rows(caps.split("\n\n")[0])
    assert " ".join(cap_rows["reference:"][1:]) == (
        "any head; softcap, alibi, window, mla; dtypes float16,bfloat16,float32")
    assert "goodcpu:" in caps
    graphs = _rows(proc.stdout.split("graph mode (decode steps captured and replayed by a framework adaptor):")[1]
                   .split("\n\n")[0])
    assert " ".join(graphs["reference:"][1:]) == "no device graph (decode runs eagerly)"
    if "maca:" in graphs:  # dlinfer-maca installed: its CUDA graphs refill their inputs with one Triton kernel
        assert " ".join(graphs["maca:"][1:]) == "device graphs; decode inputs refilled by one kernel"
    if "ascend:" in caps:  # dlinfer-ascend installed: its extras are shown, the lazy SoC probe is not called
        assert "soc_info=<lazy>" in caps.split("declared extras (display only):")[1]


def test_info_lists_broken_plugins_with_causes(runs):
    out = runs["info"].stdout
    section = out.split("plugins that failed to load:")[1]
    for plugin in BROKEN_AT_DISCOVERY:
        assert f"  {plugin} ({dist_name(plugin)} {PLUGINS[plugin][0]}): " in section, plugin
    assert "import of 'dlinfer_test_importerr' failed: ImportError: libfakevendor.so" in section
    assert "supports dlinfer API >=2.0,<3" in section
    assert "dlinfer_backend() returned dict" in section
    assert "dlinfer_backend() raised RuntimeError: vendor SDK too old" in section


def _table(stdout: str) -> dict[str, dict[str, float]]:
    cols = ("runs", "pass", "unsup", "fail", "max_abs", "max_rel")
    table = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 7 and parts[0] in SPECS:
            table[parts[0]] = dict(zip(cols, map(float, parts[1:])))
    return table


def _expected_runs(op: str) -> int:
    return sum(len(c.dtypes) for c in cases_for(size="small") if c.op == op)


def test_check_good_plugin_passes(runs):
    proc = runs["check-good"]
    assert proc.returncode == 0, _show(proc)
    assert "conformance of 'goodcpu' against 'reference'" in proc.stdout
    table = _table(proc.stdout)
    assert set(table) == set(GOOD_OPS)
    for op in GOOD_OPS:
        assert table[op]["runs"] == table[op]["pass"] == _expected_runs(op) > 0
        assert table[op]["fail"] == 0
    total = sum(_expected_runs(op) for op in GOOD_OPS)
    assert f"{total}/{total} runs conform" in proc.stdout and "FAILED" not in proc.stdout


def test_check_wrong_implementation_fails_with_max_errors(runs):
    proc = runs["check-wrong"]
    assert proc.returncode == 1, _show(proc)
    row = _table(proc.stdout)["rms_norm"]
    assert row["fail"] == row["runs"] == _expected_runs("rms_norm")
    assert row["max_abs"] > 0.1 and row["max_rel"] > 0.1  # the missing weight multiply is far off
    assert "failures:" in proc.stdout
    assert re.search(r"^  rms_norm \[.+, seed \d+\]: fail: ", proc.stdout, re.MULTILINE), proc.stdout
    assert f"0/{row['runs']:.0f} runs conform (0 passed), {row['runs']:.0f} FAILED" in proc.stdout


@pytest.mark.parametrize("command", ["check", "bench"])
def test_unknown_backend_is_an_error_message_not_a_traceback(command, capsys):
    assert main([command, "--backend", "nosuch-backend"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dlinfer {command}: error: no dlinfer backend named 'nosuch-backend' (discovered: ")


def test_bench_prints_dispatch_overhead(runs):
    proc = runs["bench"]
    assert proc.returncode == 0, _show(proc)
    m = re.search(r"dispatch overhead \(goodcpu, rms_norm on \[1, 8\]\): [+-][\d.]+ µs per call "
                  r"\(no-op implementation: direct ([\d.]+) µs, via dlinfer\.ops ([\d.]+) µs\)", proc.stdout)
    assert m, proc.stdout
    assert float(m.group(1)) > 0 and float(m.group(2)) > 0
    body = [line.split()[0] for line in proc.stdout.split("speedup")[1].splitlines() if line.strip()]
    assert body and set(body) == {"rms_norm"}


def test_pytest_plugin_runs_conformance_of_good_plugin(runs):
    proc = runs["pytest-good"]
    assert proc.returncode == 0, _show(proc)
    total = sum(_expected_runs(op) for op in GOOD_OPS)
    assert re.search(rf"\b{total} passed\b", proc.stdout), proc.stdout
    assert "failed" not in proc.stdout


@pytest.mark.parametrize("command", ["check", "bench"])
def test_unknown_op_is_an_error_naming_the_known_ops(command, capsys):
    assert main([command, "--backend", "reference", "--op", "rms_norm", "--op", "rms_nrom"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dlinfer {command}: error: --op: unknown op 'rms_nrom'; known ops: "), err
    for op in SPECS:
        assert op in err


@pytest.mark.parametrize("dtypes", ["float61", "float16,int8", "randn"])
def test_unknown_dtype_is_an_error_not_a_traceback(dtypes, capsys):
    assert main(["check", "--backend", "reference", "--op", "rms_norm", "--dtypes", dtypes]) == 2
    err = capsys.readouterr().err
    bad = dtypes.split(",")[-1]
    assert err.startswith(f"dlinfer check: error: --dtypes: unknown dtype '{bad}'; choose from float16, bfloat16, "
                          "float32"), err


def test_summary_counts_refusals_apart_from_checked_runs():
    from dlinfer.cli import summary_line
    from dlinfer.testing.runner import CaseResult

    def res(status: str) -> CaseResult:
        return CaseResult(op="rms_norm", case="c", dtype="fp16", layout="NHD", status=status)

    assert summary_line([res("pass")] * 3) == "3/3 runs conform (3 passed)"
    mixed = [res("pass")] * 2 + [res("unsupported")] * 4 + [res("fail"), res("error")]
    assert summary_line(mixed) == "6/8 runs conform (2 passed, 4 refused as unsupported), 2 FAILED"


def test_bench_of_the_reference_prints_no_speedup_against_itself(capsys):
    from dlinfer.bench import run_bench

    assert run_bench("reference", ops=["silu_and_mul"], device="cpu") == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("op "))
    assert header.split() == ["op", "case", "dtype", "backend", "µs"]
    rows = [line.split() for line in out.splitlines() if line.startswith("silu_and_mul")]
    assert rows and all(len(r) == 4 and float(r[3]) > 0 for r in rows)


def test_version_flag(capsys):
    from dlinfer import __version__
    from dlinfer.spec import API_VERSION

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"dlinfer {__version__} (op API {API_VERSION})"


def test_docs_module_help_and_bad_option(capsys):
    from dlinfer import docs

    assert docs.main(["--help"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m dlinfer.docs [--stub]")
    assert docs.main(["--bogus"]) == 2
    assert "usage:" in capsys.readouterr().err
    assert docs.main([]) == 0
    assert capsys.readouterr().out.startswith(docs.render()[:40])
