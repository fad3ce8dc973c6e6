"""Refuse LMDeploy versions this adaptor was not written for."""

from __future__ import annotations

import importlib.metadata as md

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from dlinfer_lmdeploy.inventory import SUPPORTED_LMDEPLOY


class UnsupportedLMDeployVersion(ImportError):
    pass


def installed_lmdeploy_version() -> str:
    try:
        return md.version("lmdeploy")
    except md.PackageNotFoundError as exc:
        raise UnsupportedLMDeployVersion(
            f"dlinfer-lmdeploy needs LMDeploy {SUPPORTED_LMDEPLOY}, but lmdeploy is not installed; "
            "install it with: pip install --no-deps 'lmdeploy==0.18.0' "
            f"then: pip install -r {requirements_file()} \"torch==<your torch version>\""
        ) from exc


def check_lmdeploy_version(version: str | None = None) -> str:
    """Return the installed LMDeploy version; raise UnsupportedLMDeployVersion outside the supported range."""
    version = version or installed_lmdeploy_version()
    if Version(version) not in SpecifierSet(SUPPORTED_LMDEPLOY):
        raise UnsupportedLMDeployVersion(
            f"dlinfer-lmdeploy supports LMDeploy {SUPPORTED_LMDEPLOY} (the build_op(spec) backend API); "
            f"installed: lmdeploy {version}. Install lmdeploy==0.18.* or a dlinfer-lmdeploy written for {version}."
        )
    return version


def requirements_file() -> str:
    """The path of LMDeploy's pure-Python requirements shipped with dlinfer-lmdeploy (in the wheel: next to this
    module; in a source checkout: the package root)."""
    from pathlib import Path

    here = Path(__file__).resolve().parent
    for candidate in (here / "requirements-lmdeploy.txt", here.parents[1] / "requirements-lmdeploy.txt"):
        if candidate.exists():
            return str(candidate)
    return "requirements-lmdeploy.txt (https://github.com/dlinfer-project/dlinfer, packages/dlinfer-lmdeploy)"
