"""``python -m dlinfer_lmdeploy``: the dlinfer devices LMDeploy sees, and the patch inventory with its probe."""

from __future__ import annotations

import sys


def main() -> int:
    import dlinfer_lmdeploy
    from dlinfer_lmdeploy import devices, inventory
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
    problems = inventory.probe_all(bindings=True)
    print("\nprobe: " + ("all targets in place" if not problems else "\n".join(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
