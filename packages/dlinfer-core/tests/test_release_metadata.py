"""The five distributions are released in lockstep and carry what an index page needs (source-tree check)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ["dlinfer-core", "dlinfer-maca", "dlinfer-ascend", "dlinfer-camb", "dlinfer-lmdeploy"]
UPSTREAM_LATEST = Version("0.2.7")  # DeepLink's dlinfer-ascend on the package index


def _project(name: str) -> tuple[dict, str]:
    pyproject = tomllib.loads((ROOT / "packages" / name / "pyproject.toml").read_text())
    version_file = ROOT / "packages" / name / pyproject["tool"]["hatch"]["version"]["path"]
    version = re.search(r'^__version__ = "([^"]+)"', version_file.read_text(), re.M)
    assert version, f"{version_file} has no __version__"
    return pyproject, version.group(1)


if not (ROOT / "packages" / "dlinfer-core" / "pyproject.toml").exists():
    pytest.skip("needs the source tree", allow_module_level=True)


def test_lockstep_versions_and_core_pins() -> None:
    versions = {name: Version(_project(name)[1]) for name in PACKAGES}
    core = versions["dlinfer-core"]
    assert set(versions.values()) == {core}, versions
    assert core > UPSTREAM_LATEST  # the index resolves dlinfer-ascend to this project
    for name in PACKAGES[1:]:
        deps = _project(name)[0]["project"]["dependencies"]
        (pin,) = [d for d in deps if d.startswith("dlinfer-core")]
        spec = SpecifierSet(pin.removeprefix("dlinfer-core"))
        assert core in spec, f"{name}: {pin} excludes dlinfer-core {core}"
        assert Version(f"{core.major}.{core.minor + 1}") not in spec, f"{name}: {pin} admits the next minor"


@pytest.mark.parametrize("name", PACKAGES)
def test_index_metadata(name: str) -> None:
    project = _project(name)[0]["project"]
    assert project["dynamic"] == ["version"] and "version" not in project  # one place: __version__
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "packages" / name / "LICENSE").read_bytes() == (ROOT / "LICENSE").read_bytes()
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    assert any(c.startswith("Programming Language :: Python :: 3.") for c in project["classifiers"])
    assert set(project["urls"]) >= {"Homepage", "Source", "Issues"}
    readme = (ROOT / "packages" / name / project["readme"]).read_text()
    relative = [m for m in re.findall(r"\]\(([^)#]+)\)", readme) if not m.startswith(("http://", "https://"))]
    assert relative == [], f"{name}/README.md has links that break on the index: {relative}"
