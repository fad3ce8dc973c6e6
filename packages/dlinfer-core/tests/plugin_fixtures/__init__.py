"""Real third-party backend plugins for the plugin-system tests.

Each plugin below becomes its own distribution (``dlinfer-test-<name>``, hatchling-built, entry point in
group ``dlinfer.backends``) written into a temporary directory and pip-installed with ``--target`` into a
directory that only the subprocesses of the tests see (``PYTHONPATH``), so the test process's own
registry and auto-selection are untouched. ``plugin_env()`` builds everything once per session; the test
modules declare their subprocess runs at import time (``register_command`` / ``register_scenarios``) and
they all start together, so that their interpreter start-ups overlap.

Plugins that would compete with ``goodcpu`` for auto-selection are available only when their name is
listed in ``DLINFER_TEST_ENABLE``.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
HARNESS = HERE / "harness.py"

PRELUDE = '''\
import os

import torch

from dlinfer.plugin import Backend, hookimpl


def _enabled(name):
    return name in os.environ.get("DLINFER_TEST_ENABLE", "").split(",")


def _declare(name, load_ops, *, device="cpu", api=">=1.0,<2", available=lambda: True, **kw):
    return Backend(name=name, device_type=device, api_version=api, is_available=available, load_ops=load_ops, **kw)


def rms_norm(x, weight, *, eps=1e-6):
    """Correct RMSNorm: delegates to the reference math and records the call."""
    from dlinfer.reference.norm import rms_norm as reference_rms_norm

    CALLS.append("rms_norm")
    return reference_rms_norm(x, weight, eps=eps)


CALLS = []
'''

# name -> (version, module body appended to PRELUDE)
PLUGINS: dict[str, tuple[str, str]] = {
    "goodcpu": ("1.2.3", '''
def silu_and_mul(x):
    CALLS.append("silu_and_mul")
    gate, up = x.float().chunk(2, dim=-1)
    return (torch.nn.functional.silu(gate) * up).to(x.dtype)


def _load_ops():
    return {"rms_norm": rms_norm, "silu_and_mul": silu_and_mul}


@hookimpl
def dlinfer_backend():
    return _declare("goodcpu", _load_ops, kv_layout="HND", description="third-party test plugin")
'''),
    # a second CPU backend: with it enabled, auto-selection must refuse to guess
    "twincpu": ("0.3.0", '''
@hookimpl
def dlinfer_backend():
    return _declare("twincpu", lambda: {"rms_norm": rms_norm}, available=lambda: _enabled("twincpu"))
'''),
    # runs but computes the wrong thing: RMSNorm without the weight multiply
    "wrongcpu": ("0.0.7", '''
def wrong_rms_norm(x, weight, *, eps=1e-6):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


@hookimpl
def dlinfer_backend():
    return _declare("wrongcpu", lambda: {"rms_norm": wrong_rms_norm}, available=lambda: _enabled("wrongcpu"))
'''),
    "importerr": ("0.1.1", '''
raise ImportError("libfakevendor.so: cannot open shared object file")
'''),
    "badopname": ("0.1.2", '''
@hookimpl
def dlinfer_backend():
    return _declare("badopname", lambda: {"rms_norm": rms_norm, "rms_norm_fast": rms_norm},
                    device="fakedev", available=lambda: _enabled("badopname"))
'''),
    "badsig": ("0.1.3", '''
def bad_rms_norm(x, w, eps=1e-6):
    return x


@hookimpl
def dlinfer_backend():
    return _declare("badsig", lambda: {"rms_norm": bad_rms_norm}, device="fakedev2",
                    available=lambda: _enabled("badsig"))
'''),
    "badapi": ("0.1.4", '''
@hookimpl
def dlinfer_backend():
    return _declare("badapi", lambda: {"rms_norm": rms_norm}, api=">=2.0,<3")
'''),
    "notbackend": ("0.1.5", '''
@hookimpl
def dlinfer_backend():
    return {"name": "notbackend", "device_type": "cpu"}
'''),
    "hookraises": ("0.1.6", '''
@hookimpl
def dlinfer_backend():
    raise RuntimeError("vendor SDK too old: need SDK 8")
'''),
    "dupref": ("0.1.7", '''
@hookimpl
def dlinfer_backend():
    return _declare("reference", lambda: {"rms_norm": rms_norm}, available=lambda: False)
'''),
    # an accelerator plugin (preferred over goodcpu when enabled) whose op table fails to import
    "opsraise": ("0.2.1", '''
def _load_ops():
    raise OSError("libvendorops.so: undefined symbol: aclnnRmsNorm")


@hookimpl
def dlinfer_backend():
    return _declare("opsraise", _load_ops, device="fakedev3", available=lambda: _enabled("opsraise"))
'''),
    # an accelerator plugin whose device patches fail at activation
    "activateraises": ("0.2.2", '''
def _activate():
    raise RuntimeError("device 0 is busy")


@hookimpl
def dlinfer_backend():
    return _declare("activateraises", lambda: {"rms_norm": rms_norm}, device="fakedev4",
                    available=lambda: _enabled("activateraises"), activate=_activate)
'''),
    # an accelerator plugin whose availability probe raises
    "proberaises": ("0.2.3", '''
def _probe():
    if _enabled("proberaises"):
        raise RuntimeError("driver 23.0 is older than the runtime's 24.1")
    return False


@hookimpl
def dlinfer_backend():
    return _declare("proberaises", lambda: {"rms_norm": rms_norm}, device="fakedev5", available=_probe)
'''),
    # written for API 1.0: no apply_rotary_pos_emb_inplace, no fused norm+quant ops, but their ingredients
    "oldapi": ("1.0.0", '''
from dlinfer.reference.ops import OPS as _REF


def apply_rotary_pos_emb(q, k, cos, sin, *, interleaved):
    CALLS.append("apply_rotary_pos_emb")
    return _REF["apply_rotary_pos_emb"](q, k, cos, sin, interleaved=interleaved)


def add_rms_norm(x, residual, weight, *, eps):
    CALLS.append("add_rms_norm")
    return _REF["add_rms_norm"](x, residual, weight, eps=eps)


def dynamic_quant(x, *, dtype):
    CALLS.append("dynamic_quant")
    return _REF["dynamic_quant"](x, dtype=dtype)


@hookimpl
def dlinfer_backend():
    ops = {"rms_norm": rms_norm, "apply_rotary_pos_emb": apply_rotary_pos_emb, "add_rms_norm": add_rms_norm,
           "dynamic_quant": dynamic_quant}
    return _declare("oldapi", lambda: ops, api=">=1.0,<2", available=lambda: _enabled("oldapi"))
'''),
}

# installed into a second directory, later on sys.path: a different distribution claiming 'goodcpu'
IMPOSTOR: dict[str, tuple[str, str]] = {
    "impostor": ("0.9.0", '''
@hookimpl
def dlinfer_backend():
    return _declare("goodcpu", lambda: {"rms_norm": rms_norm})
'''),
}

BROKEN_AT_DISCOVERY = ("importerr", "badapi", "notbackend", "hookraises", "dupref")
BROKEN_OP_TABLE = ("badopname", "badsig")
BROKEN_WHEN_SELECTED = ("opsraise", "activateraises", "badopname", "badsig")
"""Available accelerator plugins that fail only once selected (op table or activation)."""


def dist_name(plugin: str) -> str:
    return f"dlinfer-test-{plugin}"


def module_name(plugin: str) -> str:
    return f"dlinfer_test_{plugin}"


def write_package(root: Path, plugin: str, version: str, body: str) -> Path:
    """One hatchling-built distribution with a ``dlinfer.backends`` entry point."""
    pkg = root / dist_name(plugin)
    mod = pkg / module_name(plugin)
    mod.mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(textwrap.dedent(f'''\
        [build-system]
        requires = ["hatchling"]
        build-backend = "hatchling.build"

        [project]
        name = "{dist_name(plugin)}"
        version = "{version}"
        description = "dlinfer test plugin '{plugin}'"
        dependencies = ["dlinfer-core"]

        [project.entry-points."dlinfer.backends"]
        {plugin} = "{module_name(plugin)}"

        [tool.hatch.build.targets.wheel]
        packages = ["{module_name(plugin)}"]
        '''))
    (mod / "__init__.py").write_text(PRELUDE + body)
    return pkg


def build_wheels(packages: list[Path], out: Path) -> list[Path]:
    """Build each package's wheel with hatchling, in-process (what pip would do, minus two subprocesses each)."""
    from hatchling.builders.wheel import WheelBuilder

    return [Path(next(WheelBuilder(str(pkg)).build(directory=str(out), versions=["standard"]))) for pkg in packages]


def pip_install(target: Path, packages: list[Path], *, isolated: bool = False) -> None:
    """``pip install --target``; ``isolated``: let pip fetch the build backend (no hatchling here)."""
    offline = [] if isolated else ["--no-build-isolation", "--no-index"]
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
           *offline, "--target", str(target), *map(str, packages)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"pip install failed:\n{proc.stdout}\n{proc.stderr}")


def foreign_plugins() -> list[str]:
    """Backend plugins installed in the test environment itself (blocked in the subprocesses)."""
    return sorted({ep.name for ep in md.entry_points(group="dlinfer.backends")})


_COMMANDS: dict[str, tuple[list[str], dict[str, str] | None]] = {}
_SCENARIOS: dict[str, dict[str, Any]] = {}


def register_command(name: str, args: list[str], extra: dict[str, str] | None = None) -> None:
    """Declare (at import time) a ``python <args>`` run; ``env.command(name)`` returns its result."""
    _COMMANDS[name] = (args, extra)


def register_scenarios(group: str, scenarios: dict[str, dict[str, Any]]) -> None:
    """Declare (at import time) harness scenarios; ``env.outcomes(group)`` returns them by name.

    The scenarios of every group run in one shared subprocess.
    """
    _SCENARIOS.update({f"{group}/{k}": v for k, v in scenarios.items()})


@dataclass
class PluginEnv:
    main: Path
    dup: Path
    work: Path
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=8))
    futures: dict[str, Future[Any]] = field(default_factory=dict)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DLINFER_")}
        env["PYTHONPATH"] = str(self.main)
        env["DLINFER_DISABLE_PLUGINS"] = ",".join(foreign_plugins())
        env.update({"DLINFER_LMDEPLOY_AUTOLOAD": "0", "TORCH_DEVICE_BACKEND_AUTOLOAD": "0",
                    "PYTHONDONTWRITEBYTECODE": "1", "COLUMNS": "200"})
        for key, value in (extra or {}).items():
            if key == "DLINFER_DISABLE_PLUGINS" and env[key]:
                value = env[key] + "," + value
            env[key] = value
        return env

    def run(self, args: list[str], extra: dict[str, str] | None = None, *, timeout: float = 600,
            ) -> subprocess.CompletedProcess[str]:
        """Run ``python <args>`` with the plugin directory on PYTHONPATH, in a scratch directory."""
        return subprocess.run([sys.executable, *args], check=False, env=self.env(extra), cwd=self.work,
                              capture_output=True, text=True, timeout=timeout)

    def scenarios(self, name: str, scenarios: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Run scenarios (see harness.py) in one subprocess; returns scenario name -> outcome."""
        scenarios = {k: {**v, "path": [str(self.dup) if p == "@DUP" else p for p in v.get("path", [])]}
                     for k, v in scenarios.items()}
        spec = self.work / f"scenarios-{name}.json"
        spec.write_text(json.dumps(scenarios))
        proc = self.run([str(HARNESS), str(spec)])
        if proc.returncode != 0:
            raise RuntimeError(f"harness failed:\n{proc.stdout}\n{proc.stderr}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def start_all(self) -> None:
        """Start every declared command and the scenario subprocess (all at once: their start-ups overlap)."""
        for name, (args, extra) in _COMMANDS.items():
            if name not in self.futures:
                self.futures[name] = self.pool.submit(self.run, args, extra)
        if _SCENARIOS and "scenarios" not in self.futures:
            self.futures["scenarios"] = self.pool.submit(self.scenarios, "all", dict(_SCENARIOS))

    def command(self, name: str) -> subprocess.CompletedProcess[str]:
        self.start_all()
        return self.futures[name].result()

    def outcomes(self, group: str) -> dict[str, dict[str, Any]]:
        self.start_all()
        out = self.futures["scenarios"].result()
        return {k.split("/", 1)[1]: v for k, v in out.items() if k.startswith(group + "/")}


_ENV: PluginEnv | None = None


def plugin_env(tmp_path_factory: Any) -> PluginEnv:
    """Build and install every test plugin once per session, then start all declared jobs."""
    global _ENV
    if _ENV is None:
        base = tmp_path_factory.mktemp("dlinfer-plugins")
        src, work, dist = base / "src", base / "work", base / "dist"
        work.mkdir()
        main = [write_package(src, n, v, body) for n, (v, body) in PLUGINS.items()]
        dup = [write_package(src, n, v, body) for n, (v, body) in IMPOSTOR.items()]
        try:
            main, dup, isolated = build_wheels(main, dist), build_wheels(dup, dist), False
        except ImportError:  # no hatchling in this environment: pip builds the source trees, isolated
            isolated = True
        with ThreadPoolExecutor(2) as pool:
            jobs = [pool.submit(pip_install, base / name, pkgs, isolated=isolated)
                    for name, pkgs in (("site", main), ("site-dup", dup))]
            for job in jobs:
                job.result()
        _ENV = PluginEnv(base / "site", base / "site-dup", work)
        _ENV.start_all()
    return _ENV
