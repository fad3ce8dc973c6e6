"""pytest plugin (entry point ``pytest11``): ``pytest --dlinfer-backend=NAME`` runs the conformance kit.

Options:
    --dlinfer-backend NAME   backend to check; adds one test per (case, dtype, layout)
    --dlinfer-size S         "small" (default; CPU-friendly) or "large" (real devices)
    --dlinfer-device DEV     run on this torch device instead of the backend's own
    --dlinfer-op OP          restrict to one op (repeatable)
Any test can also request the ``dlinfer_backend`` fixture (the selected name).

The entry point is named after this module, so ``-p dlinfer.testing.pytest_plugin`` (needed when
``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1``) and the automatic load register it once, never twice.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_KIT_MODULE = Path(__file__).with_name("conformance_tests.py")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dlinfer", "dlinfer conformance kit")
    group.addoption("--dlinfer-backend", default=None, help="backend whose ops are checked against the reference")
    group.addoption("--dlinfer-size", default="small", choices=("small", "large"), help="case sizes")
    group.addoption("--dlinfer-device", default=None, help="torch device to run on (default: the backend's)")
    group.addoption("--dlinfer-op", action="append", default=None, help="only this op (repeatable)")
    group.addoption("--dlinfer-dtype", action="append", default=None,
                    help="only this dtype, e.g. bfloat16 (repeatable; default: the backend's declared dtypes)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "dlinfer_conformance: a generated conformance-kit case")
    if config.getoption("--dlinfer-backend") and str(_KIT_MODULE) not in config.args:
        config.args.append(str(_KIT_MODULE))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "dlinfer_run" not in metafunc.fixturenames:
        return
    backend = metafunc.config.getoption("--dlinfer-backend")
    if not backend:
        metafunc.parametrize("dlinfer_run", [pytest.param(None, marks=pytest.mark.skip("no --dlinfer-backend"))])
        return
    import torch

    from dlinfer.testing.runner import plan

    config = metafunc.config
    dtypes = config.getoption("--dlinfer-dtype")
    runs = plan(backend, ops=config.getoption("--dlinfer-op"), size=config.getoption("--dlinfer-size"),
                dtypes=[getattr(torch, d) for d in dtypes] if dtypes else None)
    ids = [f"{c.op}-{c.name}-{str(dt).replace('torch.', '')}-{lay}" for c, dt, lay in runs]
    metafunc.parametrize("dlinfer_run", runs, ids=ids)


@pytest.fixture
def dlinfer_backend(request: pytest.FixtureRequest) -> str | None:
    return request.config.getoption("--dlinfer-backend")
