"""``testing.child``: a failing child's first error is named even when later output fills the tail."""

from __future__ import annotations

import os
import textwrap

import pytest

from dlinfer_lmdeploy.testing.child import first_error, run_module


def test_first_error_is_the_first_exception_line_of_the_first_text_with_one():
    out = "loading\nTraceback (most recent call last):\n  x\nRuntimeError: The size of tensor a (2) must match\n" \
          "later\nValueError: could not determine the shape\n"
    assert first_error(out) == "RuntimeError: The size of tensor a (2) must match"
    assert first_error("no error here\n", "torch.OutOfMemoryError: CUDA out of memory") == \
        "torch.OutOfMemoryError: CUDA out of memory"
    assert first_error("2026-12-03 20:19:08 - lmdeploy - ERROR - Proc[0] failed\n") is None


def test_run_module_names_the_first_error_when_the_tail_holds_only_later_ones(tmp_path):
    """A worker's error, then another process's (torn down after it), then more output than the tail keeps."""
    (tmp_path / "failing_child.py").write_text(textwrap.dedent("""
        import sys
        print("Traceback (most recent call last):")
        print("RuntimeError: The size of tensor a (2) must match the size of tensor b (1)")
        print("Traceback (most recent call last):")
        print("ValueError: could not determine the shape of object type 'torch.storage.UntypedStorage'")
        print("x" * 10000)
        sys.exit(1)
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    with pytest.raises(RuntimeError) as failed:
        run_module("failing_child", [], deadline_s=60, env=env, what="failing child")
    message = str(failed.value)
    assert "failed: rc=1" in message
    assert "first error: RuntimeError: The size of tensor a (2) must match the size of tensor b (1)" in message
    assert "must match" not in message.split("stdout tail:")[1]  # only the first-error line holds it
