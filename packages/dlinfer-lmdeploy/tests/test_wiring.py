"""Fast checks of the LMDeploy wiring: version check, patch inventory, config validation, CLI, metadata."""

from __future__ import annotations

import argparse

import pytest
import torch

import dlinfer_lmdeploy
from dlinfer_lmdeploy import inventory
from dlinfer_lmdeploy.version_check import UnsupportedLMDeployVersion, check_lmdeploy_version


def test_version_check_refuses_other_lmdeploy() -> None:
    assert check_lmdeploy_version("0.18.0") == "0.18.0"
    with pytest.raises(
        UnsupportedLMDeployVersion, match=r"supports LMDeploy >=0\.18\.0,<0\.19.*installed: lmdeploy 0\.17\.0"
    ):
        check_lmdeploy_version("0.17.0")
    with pytest.raises(UnsupportedLMDeployVersion, match="0.19.0"):
        check_lmdeploy_version("0.19.0")


def test_every_patch_is_applied_and_documented() -> None:
    assert dlinfer_lmdeploy.installed()
    # on-demand patches (an extra's module, e.g. ray) are applied when the feature is used, not at install
    on_demand = {p.name for p in inventory.PATCHES if p.requires is not None}
    assert set(inventory.applied()) - on_demand == {p.name for p in inventory.PATCHES} - on_demand
    assert inventory.probe_all() == []
    for patch in inventory.PATCHES + inventory.STDLIB_PATCHES:
        assert patch.why and patch.versions and ":" in patch.target


def test_probe_fails_loudly_when_a_target_moved() -> None:
    gone = inventory.Patch(name="gone", target="lmdeploy.pytorch.backends.selector:_no_such", why="w", versions="v")
    with pytest.raises(inventory.PatchTargetMoved, match=r"patch 'gone'.*has no attribute _no_such"):
        gone.probe()
    changed = inventory.Patch(
        name="changed",
        target="lmdeploy.utils:try_import_deeplink",
        why="w",
        versions="v",
        expect_params=("device_type", "extra"),
    )
    with pytest.raises(inventory.PatchTargetMoved, match=r"parameters are \('device_type',\)"):
        changed.probe()
    behaviour = inventory.Patch(
        name="behaviour", target="lmdeploy.utils:try_import_deeplink", why="w", versions="v", contains=("nope",)
    )
    with pytest.raises(inventory.PatchTargetMoved, match="no longer contains"):
        behaviour.probe()


def test_engine_config_accepts_dlinfer_devices_only() -> None:
    from lmdeploy import PytorchEngineConfig

    cfg = PytorchEngineConfig(device_type="cpu", dtype="float32")
    assert (cfg.device_type, cfg.dtype) == ("cpu", "float32")
    with pytest.raises(AssertionError, match="invalid device_type"):
        PytorchEngineConfig(device_type="nosuchdevice")
    with pytest.raises(AssertionError):
        PytorchEngineConfig(device_type="cuda", dtype="float32")  # LMDeploy's own rules stay for cuda
    with pytest.raises(ValueError, match="quant_policy=8"):
        PytorchEngineConfig(device_type="cpu", quant_policy=8)
    with pytest.raises(AssertionError):
        PytorchEngineConfig(device_type="cpu", tp=0)  # LMDeploy's device-neutral checks still run


def test_cli_device_choices() -> None:
    from lmdeploy.cli.utils import ArgumentHelper

    parser = argparse.ArgumentParser()
    ArgumentHelper.device(parser)
    assert parser.parse_args(["--device", "cpu"]).device == "cpu"
    assert parser.parse_args(["--device", "cuda"]).device == "cuda"
    with pytest.raises(SystemExit):
        parser.parse_args(["--device", "nosuchdevice"])


def test_selector_and_helpers() -> None:
    from lmdeploy.pytorch.backends.selector import get_backend
    from lmdeploy.utils import get_max_batch_size, is_bf16_supported

    cpu = get_backend("cpu")
    assert cpu.plugin.name == "reference" and cpu.ccl_backend() == "gloo"
    assert get_backend("cpu") is cpu
    assert cpu.get_k_block_shape(16, 2, 8, torch.float32) == (16, 2, 8)
    assert is_bf16_supported("cpu") is True
    assert get_max_batch_size("cpu") == 16
    with pytest.raises(RuntimeError, match="Unsupported device type"):
        get_backend("nosuchdevice")


def test_unsupported_layer_options_are_refused() -> None:
    from lmdeploy.pytorch.backends.attention import PagedAttentionBuildSpec
    from lmdeploy.pytorch.backends.moe import SoftmaxTopKBuildSpec
    from lmdeploy.pytorch.backends.selector import get_backend

    cpu = get_backend("cpu")
    spec = dict(
        num_heads=4,
        head_dim=8,
        scale=None,
        num_kv_heads=2,
        v_head_dim=8,
        alibi=False,
        sliding_window=None,
        logit_softcapping=0.0,
        causal=True,
        use_flash_mla=False,
        mla_index_topk=None,
        learnable_sink=False,
        block_sparse_size=1,
    )
    cpu.build_op(PagedAttentionBuildSpec(**spec))
    with pytest.raises(NotImplementedError, match="learnable_sink"):
        cpu.build_op(PagedAttentionBuildSpec(**{**spec, "learnable_sink": True}))
    with pytest.raises(NotImplementedError, match="sliding_window"):
        cpu.build_op(PagedAttentionBuildSpec(**{**spec, "sliding_window": (4, 0)}))
    with pytest.raises(NotImplementedError, match="n_groups"):
        cpu.build_op(SoftmaxTopKBuildSpec(top_k=2, n_groups=4))


def _naive_slots(block_offsets, q_lens, kv_lens, bs):  # type: ignore[no-untyped-def]
    out = []
    for b, (q, kv) in enumerate(zip(q_lens, kv_lens, strict=True)):
        for pos in range(kv - q, kv):
            out.append(int(block_offsets[b, pos // bs]) * bs + pos % bs)
    return out


@pytest.mark.parametrize("table_dtype", [torch.int64, torch.int32], ids=["table-int64", "table-int32"])
@pytest.mark.parametrize("decoding", [False, True])
def test_slot_mapping(decoding: bool, table_dtype: torch.dtype) -> None:
    """Slots against a per-token loop, for LMDeploy's int64 (host devices) and int32 (CUDA) block tables; a block id
    whose slot passes 2**31 stays exact in an int64 slot mapping when the table is int32."""
    from dlinfer_lmdeploy.metadata import slot_mapping

    bs = 4
    gen = torch.Generator().manual_seed(0)
    block_offsets = torch.randperm(64, generator=gen)[:30].view(3, 10).to(table_dtype)
    kv = [9, 17, 33]
    q = [1, 1, 1] if decoding else [9, 5, 12]
    q_t = torch.tensor(q)
    q_start = torch.cumsum(q_t, 0) - q_t
    got = slot_mapping(block_offsets, q_t, torch.tensor(kv), q_start, sum(q), bs, decoding, torch.int32)
    assert got.dtype == torch.int32
    assert got.tolist() == _naive_slots(block_offsets, q, kv, bs)
    block_offsets[2, 8] = 2**30  # the last token of sequence 2 (position 32) is in block 8: slot 2**32
    wide = slot_mapping(block_offsets, q_t, torch.tensor(kv), q_start, sum(q), bs, decoding, torch.int64)
    assert wide.dtype == torch.int64
    assert wide.tolist() == _naive_slots(block_offsets, q, kv, bs) and wide[-1] == 2**32


def test_cpu_device_patch_is_scoped() -> None:
    import threading

    from dlinfer_lmdeploy import cpu_device

    was_active = cpu_device.is_active()
    cpu_device.deactivate()
    try:
        assert not cpu_device.is_active()
        assert "HostStream" not in repr(torch.cuda.Stream)
        if not torch.cuda.is_available():
            with pytest.raises((AssertionError, RuntimeError)):
                torch.zeros(2, device="cuda")
        cpu_device.activate()
        assert torch.zeros(2, device="cuda").device.type == "cpu"
        assert torch.ones(2).to("cuda").device.type == "cpu"
        assert torch.cuda.Event().query() is True
        assert torch.cuda.current_stream() is not torch.cuda.Stream()
        free, total = torch.cuda.mem_get_info()
        assert 0 < free <= total
        seen = []
        t = threading.Thread(target=lambda: seen.append(torch.empty(1, device="cuda").device.type))
        t.start()
        t.join()
        assert seen == ["cpu"]
    finally:
        if not was_active:
            cpu_device.deactivate()
        else:
            cpu_device.activate()


def test_cpu_device_thread_leaves_no_mode_behind() -> None:
    """A thread started while the CPU device is active runs under the host mode and pops it before it ends: a mode
    left on torch's thread-local stack is released by a C++ destructor after the thread's Python state is gone,
    which aborts the process when it races with interpreter shutdown (seen as exit 134 after a passing run)."""
    import threading

    from dlinfer_lmdeploy import cpu_device

    was_active = cpu_device.is_active()
    cpu_device.deactivate()
    cpu_device.activate()
    dlinfer_bootstrap = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]
    stack_depth: dict[str, int] = {}

    def observe_after_bootstrap(self: threading.Thread) -> None:
        dlinfer_bootstrap(self)
        stack_depth["after"] = torch._C._len_torch_function_stack()

    def body() -> None:
        stack_depth["during"] = torch._C._len_torch_function_stack()
        stack_depth["cuda_goes_to"] = torch.empty(1, device="cuda").device.type == "cpu"

    threading.Thread._bootstrap_inner = observe_after_bootstrap  # type: ignore[attr-defined]
    try:
        t = threading.Thread(target=body)
        t.start()
        t.join()
    finally:
        threading.Thread._bootstrap_inner = dlinfer_bootstrap  # type: ignore[attr-defined]
        cpu_device.deactivate()
        if was_active:
            cpu_device.activate()
    assert stack_depth == {"during": 1, "cuda_goes_to": True, "after": 0}


def test_inventory_lists_what_is_replaced_outside_lmdeploy(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m dlinfer_lmdeploy`` also lists the .pth import hook and every torch.cuda attribute the CPU device
    replaces; the listing is the set the CPU device really replaces when it activates."""
    from dlinfer_lmdeploy import __main__ as cli
    from dlinfer_lmdeploy import cpu_device

    cli.main()
    out = capsys.readouterr().out.split("outside LMDeploy:")[1]
    assert "dlinfer_lmdeploy_autoload.pth" in out and "sys.meta_path" in out
    assert "torch._C._cuda_clearCublasWorkspaces" in out and "CudaToHostMode" in out
    listed = out.split("torch.cuda stand-ins")[1].split(":", 1)[1].splitlines()[0]
    was_active = cpu_device.is_active()
    cpu_device.deactivate()
    before = {name: getattr(torch.cuda, name, None) for name in dir(torch.cuda)}
    try:
        cpu_device.activate()
        replaced = {name for name in dir(torch.cuda) if getattr(torch.cuda, name, None) is not before.get(name)}
    finally:
        cpu_device.deactivate()
        if was_active:
            cpu_device.activate()
    assert {n.strip() for n in listed.split(",")} == replaced


@pytest.mark.parametrize("decoding", [False, True])
def test_slot_mapping_reads_the_block_table_without_converting_it(decoding: bool) -> None:
    """LMDeploy's CUDA block table is int32 [B, max_blocks]; the slots need B entries of it, so no op may take the
    whole table (a dtype conversion of it was one more kernel per step)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from dlinfer_lmdeploy.metadata import slot_mapping

    table = torch.arange(3 * 50, dtype=torch.int32).view(3, 50)
    kv, q = ([9, 17, 33], [1, 1, 1]) if decoding else ([9, 17, 33], [9, 5, 12])
    q_t = torch.tensor(q)
    seen: list[str] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if args and isinstance(args[0], torch.Tensor) and args[0].shape == table.shape:
                seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Record():
        got = slot_mapping(table, q_t, torch.tensor(kv), torch.cumsum(q_t, 0) - q_t, sum(q), 4, decoding, torch.int64)
    assert got.tolist() == _naive_slots(table, q, kv, 4)
    assert all("_to_copy" not in op and "copy" not in op for op in seen), seen
