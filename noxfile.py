"""Sessions for the dlinfer monorepo.

CPU (any machine):   tests (default), tests-vlm (VLM tests that need torchvision), lint, build, demo, bench
Hardware targets:    tests-maca, bench-maca (a CUDA-compatible GPU), tests-ascend (Ascend NPU), tests-camb (MLU)
The hardware sessions run inside a vendor image whose torch is preinstalled: no new venv,
and dlinfer's packages are installed without dependencies so pip never replaces the vendor's torch.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PACKAGES = ["dlinfer-core", "dlinfer-maca", "dlinfer-ascend", "dlinfer-camb", "dlinfer-lmdeploy"]
CPU_TORCH = "torch==2.13.0"  # the CPU test pin; the packages themselves declare ranges
TRITON_CPU = "triton==3.6.0"  # the Triton interpreter runs the maca kernels on CPU tensors
# tests-vlm: VLM processors need torchvision, and the PyPI torchvision builds for Linux are CUDA builds that do not
# load beside the CPU torch 2.13 (operator torchvision::nms does not exist). torch 2.14.1 (its CUDA build, run on
# the CPU) + torchvision 0.29.1 load together; torch brings its own triton.
VLM_TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
LMDEPLOY = "lmdeploy==0.18.0"
TEST_TOOLS = ["pytest>=8", "pytest-timeout", "hatchling", "editables"]

nox.options.sessions = ["tests", "tests-vlm"]
nox.options.reuse_existing_virtualenvs = True


def _pkg(name: str) -> str:
    return str(ROOT / "packages" / name)


def _existing(names: list[str]) -> list[str]:
    return [n for n in names if (ROOT / "packages" / n / "pyproject.toml").exists()]


def _install_cpu_stack(session: nox.Session, torch_pins: tuple[str, ...] = (CPU_TORCH, TRITON_CPU)) -> None:
    """torch (``torch_pins``, default the CPU pin) first, then every package editable, then LMDeploy's
    pure-Python engine; the pins are repeated with every install so that pip never swaps torch."""
    session.install(*torch_pins, *TEST_TOOLS)
    args = []
    for name in _existing(PACKAGES):
        args += ["-e", _pkg(name)]
    session.install(*args, *torch_pins)
    req = ROOT / "packages" / "dlinfer-lmdeploy" / "requirements-lmdeploy.txt"
    if req.exists():
        session.install("--no-deps", LMDEPLOY)
        session.install("-r", str(req), *torch_pins)


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """Every package's CPU tests (reference, simulators, Triton interpreter, LMDeploy end-to-end)."""
    _install_cpu_stack(session)
    if "dlinfer-lmdeploy" in _existing(PACKAGES):  # extras: serve (api_server tests), ray (ray executor tests)
        session.install("-e", f"{_pkg('dlinfer-lmdeploy')}[serve,ray]", CPU_TORCH, TRITON_CPU)
    env = {"TRITON_INTERPRET": "1", "TORCH_DEVICE_BACKEND_AUTOLOAD": "0", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    selected = session.posargs or _existing(PACKAGES)
    for name in selected:
        tests_dir = ROOT / "packages" / name / "tests"
        if tests_dir.exists():
            session.log(f"--- {name}")
            # one pytest process per package: simulators replace vendor modules inside their own process only
            session.run("pytest", "-q", "-p", "no:cacheprovider", "--timeout=900", str(tests_dir), env=env)


@nox.session(name="tests-vlm", python="3.11")
def tests_vlm(session: nox.Session) -> None:
    """Every package's tests that need torchvision (marker ``torchvision``: VLM rows of the model table end to end
    on the CPU, with the reference backend and the vendor simulators), on torch 2.14.1 + torchvision 0.29.1 (CPU
    execution)."""
    _install_cpu_stack(session, tuple(VLM_TORCH))
    env = {"TRITON_INTERPRET": "1", "TORCH_DEVICE_BACKEND_AUTOLOAD": "0", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    for name in session.posargs or _existing(PACKAGES):
        tests_dir = ROOT / "packages" / name / "tests"
        if tests_dir.exists():
            session.log(f"--- {name}")
            # one pytest process per package (as in tests); exit code 5: the package has no torchvision tests
            session.run("pytest", "-q", "-p", "no:cacheprovider", "--timeout=900", "-m", "torchvision",
                        str(tests_dir), env=env, success_codes=[0, 5])


@nox.session(python="3.11")
def demo(session: nox.Session) -> None:
    """The main job on the CPU default: backends, conformance of the reference, then generation via LMDeploy."""
    _install_cpu_stack(session)
    session.run("dlinfer", "info")
    session.run("dlinfer", "check")
    if (ROOT / "packages" / "dlinfer-lmdeploy" / "src" / "dlinfer_lmdeploy" / "demo.py").exists():
        session.run("python", "-m", "dlinfer_lmdeploy.demo", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", *[_pkg(n) for n in _existing(PACKAGES)], "noxfile.py")


@nox.session(python="3.11")
def build(session: nox.Session) -> None:
    """Wheel + sdist of every package with hatchling; resolve their declared dependencies together (pip dry run);
    install the wheels in a fresh venv; resolve entry points."""
    session.install("build", "hatchling")
    dist = ROOT / "dist"
    for name in _existing(PACKAGES):
        session.run("python", "-m", "build", "--no-isolation", "--outdir", str(dist), _pkg(name))
    wheels = sorted(str(p) for p in dist.glob("dlinfer_*.whl"))
    # the declared dependencies resolve together (with the CPU pins), each distribution from its built wheel
    pins = [f"{Path(w).name.split('-')[0].replace('_', '-')}=={Path(w).name.split('-')[1]}" for w in wheels]
    session.run("python", "-m", "pip", "install", "--dry-run", "--quiet", "--find-links", str(dist), *pins,
                CPU_TORCH, TRITON_CPU)
    session.install(CPU_TORCH)
    session.install("--no-deps", *wheels)
    session.install("pluggy", "packaging")
    session.run("python", str(ROOT / ".ci" / "check_entry_points.py"), *[n for n in _existing(PACKAGES)])


def _source_env(package: str) -> dict[str, str]:
    """Run from the source tree without installing: vendor images are often offline and must keep their torch."""
    module = package.replace("-", "_")
    paths = [str(ROOT / "packages" / p / "src") for p in ("dlinfer-core", package)]
    return {"PYTHONPATH": os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]),
            "DLINFER_PLUGINS": f"{module}.plugin", "DLINFER_HARDWARE": "1"}


_HARDWARE = {  # package: (what the session needs, a probe run with the image's python; fails with the reason)
    "dlinfer-maca": ("a CUDA-compatible GPU (MetaX C500 with MACA, or NVIDIA) with torch and Triton",
                     "import torch, triton; assert torch.cuda.is_available(), 'torch.cuda.is_available() is False'"),
    "dlinfer-ascend": ("an Ascend NPU with torch_npu and CANN",
                       "import glob, importlib.util as u; assert glob.glob('/dev/davinci[0-9]*'), 'no /dev/davinci* "
                       "device node'; assert u.find_spec('torch_npu'), 'torch_npu is not installed'"),
    "dlinfer-camb": ("a Cambricon MLU with torch_mlu and torch_mlu_ops",
                     "import glob, importlib.util as u; assert glob.glob('/dev/cambricon_dev*'), 'no "
                     "/dev/cambricon_dev* device node'; assert u.find_spec('torch_mlu') and "
                     "u.find_spec('torch_mlu_ops'), 'torch_mlu or torch_mlu_ops is not installed'"),
}


def _require_hardware(session: nox.Session, package: str) -> None:
    """Fail at once, saying what is missing, on a machine without the session's hardware and vendor stack."""
    what, probe = _HARDWARE[package]
    found = subprocess.run(["python", "-c", probe], capture_output=True, text=True, check=False)
    if found.returncode != 0:
        lines = (found.stderr or found.stdout).strip().splitlines()
        session.error(f"{session.name} needs {what}, run inside the vendor image on that machine; not here: "
                      f"{lines[-1] if lines else 'the probe failed'}. Without the hardware run `nox -s tests` "
                      "(CPU: the reference backend, the vendor simulators and the Triton interpreter)")


def _vendor_session(session: nox.Session, package: str, backend: str, size: str) -> None:
    _require_hardware(session, package)
    env = _source_env(package)
    session.run("python", "-m", "dlinfer", "info", external=True, env=env)
    session.run("python", "-m", "pytest", "-q", "-p", "dlinfer.testing.pytest_plugin", "-p", "no:cacheprovider",
                str(ROOT / "packages" / package / "tests"), f"--dlinfer-backend={backend}", f"--dlinfer-size={size}",
                *session.posargs, external=True, env=env)


@nox.session(name="tests-maca", venv_backend="none")
def tests_maca(session: nox.Session) -> None:
    """On a CUDA-compatible GPU (MetaX C500 or NVIDIA) with torch + triton preinstalled: large conformance cases."""
    _vendor_session(session, "dlinfer-maca", "maca", "large")


@nox.session(name="bench-maca", venv_backend="none")
def bench_maca(session: nox.Session) -> None:
    _require_hardware(session, "dlinfer-maca")
    session.run("python", "-m", "dlinfer_maca.bench", *session.posargs, external=True, env=_source_env("dlinfer-maca"))


@nox.session(name="tests-ascend", venv_backend="none")
def tests_ascend(session: nox.Session) -> None:
    """On an Ascend machine with torch + torch_npu + CANN preinstalled (not runnable here)."""
    _vendor_session(session, "dlinfer-ascend", "ascend", "large")


@nox.session(name="tests-camb", venv_backend="none")
def tests_camb(session: nox.Session) -> None:
    """On a Cambricon MLU machine with torch_mlu + torch_mlu_ops preinstalled (not runnable here)."""
    _vendor_session(session, "dlinfer-camb", "camb", "large")


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Dispatch overhead and per-op timings of the selected backend (CPU: the reference)."""
    _install_cpu_stack(session)
    session.run("dlinfer", "bench", *session.posargs, env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
