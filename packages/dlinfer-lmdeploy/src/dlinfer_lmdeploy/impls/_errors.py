"""Refusals: an LMDeploy option the dlinfer path does not serve is an error, never ignored."""

from __future__ import annotations


def unsupported(op: str, option: str, detail: str = "") -> NotImplementedError:
    from dlinfer_lmdeploy import devices

    device = devices.active() or "?"
    extra = f" ({detail})" if detail else ""
    return NotImplementedError(
        f"dlinfer-lmdeploy {op}: option '{option}' is not supported on dlinfer device '{device}'{extra}"
    )
