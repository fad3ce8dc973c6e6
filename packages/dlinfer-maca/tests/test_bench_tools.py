"""The GPU benchmark tools' host-side logic, on the CPU: Nsight Compute report parsing (``tools/ncu_kernels_gpu.py``)
and the cold-L2 cache rotation of the op benchmark (``dlinfer_maca.bench``)."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import ncu_kernels_gpu as ncu  # noqa: E402

from dlinfer_maca import bench  # noqa: E402

STALL = "smsp__average_warps_issue_stalled_{}_per_issue_active.ratio"


def _write_raw(path: Path, rows: list[list[str]]) -> None:
    header = ["ID", "Kernel Name", "gpu__time_duration.sum", "dram__bytes.sum.per_second",
              "launch__registers_per_thread", STALL.format("long_scoreboard"), STALL.format("wait"),
              STALL.format("barrier"), STALL.format("selected"), STALL.format("short_scoreboard"),
              "smsp__average_warps_issue_stalled_not_issued_per_issue_active.ratio"]
    units = ["", "", "nsecond", "Tbyte/s", "register/thread", "ratio", "ratio", "ratio", "ratio", "ratio", "ratio"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(["==PROF== a line ncu prints before the table"])
        w.writerows([header, units, *rows])


def test_ncu_summary_labels_kernels_by_the_preceding_marker(tmp_path):
    marker = ["0", ncu.MARKER, "1,024", "0.01", "16", "0", "0", "0", "0", "0", "0"]
    rows = [
        marker,
        ["1", "_w4a16_gemv_kernel", "24,000", "1.25", "128", "3.9", "1.2", "0.1", "1.0", "0.4", "9.9"],
        [*marker[:1], ncu.MARKER, *marker[2:]],
        ["3", "awq_linear_kernel", "40,000", "0.5", "200", "1.0", "0.6", "0.2", "1.0", "0.6", "9.9"],
        ["4", "splitk_reduce", "2,000", "0.1", "32", "0", "0", "0", "0", "0", "0"],
        ["5", "short row"],
    ]
    _write_raw(tmp_path / "raw.csv", rows)
    recs = ncu.summarise(tmp_path / "raw.csv", ["ours", "theirs"])
    assert [(r["case"], r["kernel"]) for r in recs] == [
        ("ours", "_w4a16_gemv_kernel"), ("theirs", "awq_linear_kernel"), ("theirs", "splitk_reduce")]
    assert recs[0]["us"] == pytest.approx(24.0) and recs[1]["regs"] == 200
    assert recs[0]["dram_GBps"] == pytest.approx(1250.0)
    assert recs[0]["dram_MB"] == pytest.approx(1250.0 * 24.0 * 1e-3)  # GB/s x us
    assert list(recs[0]["stalls"]) == ["long_scoreboard", "wait", "selected", "short_scoreboard"]  # top 4
    assert "not_issued" not in recs[1]["stalls"] and recs[2]["stalls"] == {}


def test_ncu_cases_are_checked_before_ncu_starts():
    assert ncu.check_cases("w4_m1,decode_b1") == ["w4_m1", "decode_b1"]
    for bad in ("w4_m2", "", "w4_m1,nope"):
        with pytest.raises(SystemExit, match="--cases expects names from"):
            ncu.check_cases(bad)


@pytest.mark.parametrize(("mb", "copies"), [(0, 1), (1, 3), (3, 7)])
def test_cold_l2_rotation_hands_out_identical_copies_in_turn(mb, copies):
    p = {"key_cache": torch.randn(64, 16, 8, 16, dtype=torch.bfloat16),  # 256 KiB each
         "value_cache": torch.randn(64, 16, 8, 16, dtype=torch.bfloat16),
         "block_table": torch.randperm(64, dtype=torch.int32).view(2, 32), "seqlens_kv": torch.tensor([900, 1024])}
    nbytes = p["key_cache"].nbytes + p["value_cache"].nbytes
    assert copies == 1 + (math.ceil(mb * 2**20 / nbytes) if mb else 0)
    rot = bench._Rotation(p, mb)
    handed = [rot() for _ in range(2 * copies)]
    ptrs = [c["key_cache"].data_ptr() for c in handed]
    assert len(set(ptrs)) == copies and ptrs[:copies] == ptrs[copies:]  # each copy once per turn
    for c in handed:
        for k, v in p.items():
            assert torch.equal(c[k], v)


def test_decode_sweep_shapes_parse_batch_context_and_capacity():
    """``tune_norm_decode_gpu.py --decode-shapes``: a capacity after ``@`` is the max_seqlen_kv passed (a graph's)."""
    import tune_norm_decode_gpu as tune

    assert tune._decode_shapes("1x384@8192,64x4096") == ((1, 384, 8192), (64, 4096, 4096))
    with pytest.raises(ValueError):
        tune._decode_shapes("1-384")
