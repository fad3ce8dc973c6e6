"""Refuse to run when DeepLink's dlinfer shares the ``dlinfer/`` import package with dlinfer-core.

DeepLink's wheels (``dlinfer-ascend`` 0.1.0-0.2.x on the package index, ``dlinfer-maca``/``dlinfer-camb`` builds in
LMDeploy's vendor images) install the import package ``dlinfer/`` too; pip does not detect that two distributions
write the same directory, and the result runs DeepLink's ``dlinfer/ops/`` where this project's ``dlinfer.ops``
should be (``rms_norm() missing 1 required positional argument: 'epsilon'``). Its top-level entries are not part
of dlinfer-core, so their presence beside this file is the signal. Imports nothing heavy (checked at every
``import dlinfer``: a few ``stat`` calls).
"""

from __future__ import annotations

import os

UPSTREAM_ENTRIES = ("framework", "vendor", "graph", "utils", os.path.join("ops", "__init__.py"))
"""Top-level entries of DeepLink's ``dlinfer/`` package that dlinfer-core does not have."""


class MixedInstallError(ImportError):
    """DeepLink's dlinfer files are installed inside dlinfer-core's ``dlinfer/`` package."""


def upstream_entries(package_dir: str) -> list[str]:
    """The entries of DeepLink's ``dlinfer/`` package present in ``package_dir``."""
    return [e for e in UPSTREAM_ENTRIES if os.path.exists(os.path.join(package_dir, e))]


def owners(package_dir: str, entries: list[str]) -> list[str]:
    """``name version`` of the installed distributions (not dlinfer-core) whose files include ``entries``."""
    from importlib import metadata

    site = os.path.dirname(os.path.abspath(package_dir))
    prefixes = tuple(f"dlinfer/{e.split(os.sep)[0]}" for e in entries)
    found = []
    for dist in metadata.distributions(path=[site]):
        name = dist.metadata["Name"] or "?"
        if name.lower().replace("_", "-") == "dlinfer-core":
            continue
        if any(str(f).replace(os.sep, "/").startswith(prefixes) for f in dist.files or ()):
            found.append(f"{name} {dist.version}")
    return sorted(set(found))


def check(package_dir: str) -> None:
    """Raise :class:`MixedInstallError` naming the files and what to uninstall when DeepLink's dlinfer is mixed in."""
    entries = upstream_entries(package_dir)
    if not entries:
        return
    dists = owners(package_dir, entries)
    names = " ".join(d.split()[0] for d in dists) or "<the distribution that installed them>"
    raise MixedInstallError(
        f"DeepLink's dlinfer is installed in the same import package as dlinfer-core ({package_dir}: "
        f"{', '.join(e + ('/' if '.' not in e else '') for e in entries)} are not dlinfer-core files"
        f"{'; installed by ' + ', '.join(dists) if dists else ''}). The two projects share the name 'dlinfer' and "
        f"cannot be installed together. Fix: pip uninstall -y {names} dlinfer-core, then "
        "pip install dlinfer-core and this project's vendor package (dlinfer-ascend/dlinfer-maca/dlinfer-camb "
        ">= 1.0; DeepLink's releases are 0.x)."
    )
