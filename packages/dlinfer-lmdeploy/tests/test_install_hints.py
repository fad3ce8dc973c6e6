"""Without LMDeploy the error names the requirements file dlinfer-lmdeploy ships (in the wheel and the checkout)."""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

import pytest

from dlinfer_lmdeploy import version_check


def test_missing_lmdeploy_points_to_a_file_that_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(version_check.md, "version", missing)
    with pytest.raises(version_check.UnsupportedLMDeployVersion) as err:
        version_check.installed_lmdeploy_version()
    path = Path(str(err.value).split("pip install -r ")[1].split(" ")[0])
    assert path.is_file() and "mmengine-lite" in path.read_text()


def test_wheel_ships_the_requirements() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[1]
    forced = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert forced["force-include"]["requirements-lmdeploy.txt"] == "dlinfer_lmdeploy/requirements-lmdeploy.txt"
