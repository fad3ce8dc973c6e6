"""``python -m dlinfer_lmdeploy``: the dlinfer devices LMDeploy sees, and the patch inventory with its probe."""

from __future__ import annotations

import sys


def _autoload() -> str:
    """The interpreter-start import hook (``dlinfer_lmdeploy_autoload.pth``) and whether it is in effect."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("dlinfer_lmdeploy_autoload")
    where = spec.origin if spec is not None else "not installed"
    state = "disabled (DLINFER_LMDEPLOY_AUTOLOAD=0)" if os.environ.get("DLINFER_LMDEPLOY_AUTOLOAD") == "0" else "on"
    return (
        f"dlinfer_lmdeploy_autoload.pth -> {where}: a sys.meta_path finder installed at interpreter start that "
        f"imports dlinfer_lmdeploy (applying the inventory) right after lmdeploy is imported, in every process of "
        f"the environment; {state}"
    )


def main() -> int:
    import dlinfer_lmdeploy
    from dlinfer_lmdeploy import cpu_device, devices, inventory
    from dlinfer_lmdeploy.version_check import installed_lmdeploy_version

    print(f"dlinfer-lmdeploy {dlinfer_lmdeploy.__version__} on lmdeploy {installed_lmdeploy_version()}")
    for name, device in sorted(devices.devices().items()):
        b = device.backend
        print(
            f"  device '{name}': backend {b.name} (torch device {b.device_type}), kv_layout {b.kv_layout}, "
            f"block_sizes {b.block_sizes or 'any'}, host_seqlens {b.host_seqlens}, dist {b.dist_backend}, "
            f"graph {'yes' if b.graph else 'no'}"
        )
    print("\npatch inventory:\n" + inventory.describe())
    print("\noutside LMDeploy:\n" + _autoload() + "\nCPU device (device 'cpu' and host-simulated devices), while "
          "active:\n" + "\n".join(f"  {line}" for line in cpu_device.describe().splitlines()))
    problems = inventory.probe_all(bindings=True)
    print("\nprobe: " + ("all targets in place" if not problems else "\n".join(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
