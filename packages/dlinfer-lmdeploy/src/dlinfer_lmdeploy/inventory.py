"""Every patch dlinfer-lmdeploy applies to LMDeploy internals (and the one to the stdlib), in one place.

Each :class:`Patch` states its target, why it is needed and the LMDeploy versions it was
written against, and carries a probe: before a patch is applied, the probe checks that the
target still exists and still looks the way the patch expects, and raises
:class:`PatchTargetMoved` (naming the patch, the target and what changed) otherwise. A
patch is never applied blindly to something that moved.

Apply them with :func:`apply_all` (done by :func:`dlinfer_lmdeploy.install`); list them with
``python -m dlinfer_lmdeploy``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_LMDEPLOY = ">=0.18.0,<0.19"


class PatchTargetMoved(ImportError):
    """An LMDeploy internal a patch relies on is missing or changed shape."""


@dataclass(frozen=True)
class Patch:
    name: str
    target: str
    """``module:attribute`` (dotted attribute path allowed)."""
    why: str
    versions: str
    expect_params: tuple[str, ...] | None = None
    """Parameter names the target must have (checked by the probe), ``None`` for no check."""
    contains: tuple[str, ...] = ()
    """Strings that must appear in the target's source (the behaviour the patch replaces)."""
    also_bound_in: tuple[str, ...] = ()
    """Modules that import the target by name (``from x import f``); rebound there when already imported
    (``python -m dlinfer_lmdeploy`` checks the list against LMDeploy's source: :func:`unlisted_bindings`)."""
    bound_unpatched: tuple[str, ...] = ()
    """Modules that import the target by name but need no patch (say why in ``why``)."""
    requires: str | None = None
    """An optional package the target's module imports (an extra, e.g. ``ray``): the patch is not applied at install
    but on demand, when the feature is used (:func:`apply`), and is probed only where the package is installed."""

    def resolve(self) -> tuple[Any, str, Any]:
        """Return (owner, attribute, current value); raise PatchTargetMoved if it is gone."""
        module_name, _, attr_path = self.target.partition(":")
        try:
            owner: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise self.moved(f"module {module_name} cannot be imported ({exc})") from exc
        parts = attr_path.split(".")
        for part in parts[:-1]:
            if not hasattr(owner, part):
                raise self.moved(f"{module_name} has no attribute path {attr_path}")
            owner = getattr(owner, part)
        if not hasattr(owner, parts[-1]):
            raise self.moved(f"{module_name} has no attribute {attr_path}")
        return owner, parts[-1], inspect.getattr_static(owner, parts[-1])

    def moved(self, what: str) -> PatchTargetMoved:
        return PatchTargetMoved(
            f"dlinfer-lmdeploy patch '{self.name}' cannot be applied: {what}. "
            f"Target {self.target} (written for LMDeploy {self.versions}). Why it is patched: {self.why}"
        )

    def probe(self) -> None:
        """Check that the target is where and what this patch expects; raise PatchTargetMoved if not."""
        _, _, value = self.resolve()
        func = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
        func = getattr(func, "__dlinfer_original__", func)
        if self.expect_params is not None:
            try:
                params = tuple(inspect.signature(func).parameters)
            except (TypeError, ValueError) as exc:
                raise self.moved(f"target is not a function ({exc})") from exc
            if params != self.expect_params:
                raise self.moved(f"its parameters are {params}, expected {self.expect_params}")
        if self.contains:
            try:
                source = inspect.getsource(func)
            except (OSError, TypeError) as exc:
                raise self.moved(f"its source cannot be read ({exc})") from exc
            missing = [s for s in self.contains if s not in source]
            if missing:
                raise self.moved(f"its source no longer contains {missing}")
        attr = self.target.partition(":")[2].split(".")[-1]
        for module_name in self.also_bound_in:
            module = sys.modules.get(module_name)
            if module is not None and not hasattr(module, attr):
                raise self.moved(f"{module_name} no longer imports {attr} by name")


def _module_of_file(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _module_level(tree: ast.AST) -> Iterator[ast.AST]:
    """The nodes run at import time (function bodies import at call time and see the patched value)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        yield node
        yield from _module_level(node)


def binding_modules(patch: Patch) -> list[str]:
    """Every LMDeploy module whose source imports the patch target by name (``from m import f``).

    A static scan of the installed ``lmdeploy`` package (module-level imports, relative ones resolved); such a module
    holds the function by value, so it keeps the original unless it is in ``also_bound_in``.
    Only module-level targets (``module:function``) can be bound this way; others give ``[]``.
    """
    module_name, _, attr_path = patch.target.partition(":")
    if "." in attr_path or not module_name.startswith("lmdeploy"):
        return []
    spec = importlib.util.find_spec("lmdeploy")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(next(iter(spec.submodule_search_locations)))
    found = []
    for path in sorted(root.rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if attr_path not in text:
            continue
        this = _module_of_file(path, root)
        package = this if path.name == "__init__.py" else this.rpartition(".")[0]
        for node in _module_level(ast.parse(text)):
            if not isinstance(node, ast.ImportFrom) or not any(a.name == attr_path for a in node.names):
                continue
            source = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, source] if source else base)
            if source == module_name and this != module_name:
                found.append(this)
                break
    return found


def unlisted_bindings(patch: Patch) -> list[str]:
    """Modules that bind the target by name but are neither patched (``also_bound_in``) nor excused."""
    known = set(patch.also_bound_in) | set(patch.bound_unpatched)
    return [m for m in binding_modules(patch) if m not in known]


def stale_bindings() -> list[str]:
    """Loaded ``lmdeploy`` modules that still hold the original of an applied patch (``module.name``)."""
    stale = []
    for name, (_, _, _, original) in _APPLIED.items():
        if _BY_NAME[name] in STDLIB_PATCHES:
            continue
        for module_name, module in list(sys.modules.items()):
            if module is None or not module_name.startswith("lmdeploy"):
                continue
            for key, value in list(vars(module).items()):
                if value is original:
                    stale.append(f"{module_name}.{key} (patch '{name}')")
    return stale


PATCHES: tuple[Patch, ...] = (
    Patch(
        name="backend-selector",
        target="lmdeploy.pytorch.backends.selector:_get_backend",
        why=(
            "LMDeploy picks its ops backend with a hard-coded if-chain on device_type; the wrapper returns the "
            "generic dlinfer OpsBackend configured from the plugin for every dlinfer device and defers to the "
            "original otherwise. get_backend() looks _get_backend up at call time, so wrapping it reaches every "
            "nn layer, StepContext.new, the cache engine and the graph runner."
        ),
        versions=SUPPORTED_LMDEPLOY,
        expect_params=(),
        contains=("device_type", "Unsupported device type"),
    ),
    Patch(
        name="engine-config-validation",
        target="lmdeploy.messages:PytorchEngineConfig.__post_init__",
        why=(
            "PytorchEngineConfig asserts device_type in a fixed list and dtype in auto/float16/bfloat16. The "
            "wrapper validates dlinfer devices itself (block size against the plugin, no KV quantisation, float32 "
            "allowed on CPU devices) and runs the original checks for everything else."
        ),
        versions=SUPPORTED_LMDEPLOY,
        expect_params=("self",),
        contains=("'cuda', 'ascend', 'maca', 'camb'", "'auto', 'float16', 'bfloat16'"),
    ),
    Patch(
        name="cli-device-choices",
        target="lmdeploy.cli.utils:ArgumentHelper.device",
        why="The CLI's --device has fixed argparse choices; dlinfer devices are added to them.",
        versions=SUPPORTED_LMDEPLOY,
        expect_params=("parser", "default", "choices"),
    ),
    Patch(
        name="deeplink-import",
        target="lmdeploy.utils:try_import_deeplink",
        why=(
            "LMDeploy imports the old dlinfer.framework.lmdeploy_ext for ascend/maca/camb (exit(1) when missing) "
            "from the env checker and the mp/ray workers. The replacement activates the dlinfer device instead "
            "(device patches + op table) and defers to the original for other names."
        ),
        versions=SUPPORTED_LMDEPLOY,
        expect_params=("device_type",),
        contains=("dlinfer.framework.lmdeploy_ext",),
        also_bound_in=(
            "lmdeploy.pytorch.check_env.deeplink",
            "lmdeploy.pytorch.engine.executor.mp_executor",
            "lmdeploy.pytorch.engine.executor.ray_executor",
            "lmdeploy.lite.apis.auto_awq",
            "lmdeploy.lite.apis.smooth_quant",
        ),
    ),
    Patch(
        name="max-batch-size",
        target="lmdeploy.utils:get_max_batch_size",
        why=(
            "Asserts the four built-in device names; dlinfer devices get the plugin's Backend.max_batch_size or 16 on "
            "host devices, 256 otherwise. lmdeploy.cli.serve binds it before the adaptor is imported (the "
            "cli-device-choices patch imports lmdeploy.cli); turbomind binds it too but calls it with 'cuda' only."
        ),
        versions=SUPPORTED_LMDEPLOY,
        expect_params=("device_type",),
        also_bound_in=("lmdeploy.pytorch.engine.config_builder", "lmdeploy.cli.serve"),
        bound_unpatched=("lmdeploy.turbomind.turbomind",),
    ),
    Patch(
        name="bf16-support",
        target="lmdeploy.utils:is_bf16_supported",
        why=(
            "Returns False for unknown devices (silently turning bf16 checkpoints into fp16); dlinfer devices answer "
            "from the plugin's Backend.dtypes."
        ),
        versions=SUPPORTED_LMDEPLOY,
        expect_params=("device_type",),
        also_bound_in=(
            "lmdeploy.pytorch.config",
            "lmdeploy.pytorch.configurations.qwen3_5",
            "lmdeploy.vl.engine",
        ),
    ),
    Patch(
        name="cogvlm-config-bf16",
        target="lmdeploy.pytorch.configurations.cogvlm:CogVLMModelConfigBuilder.build",
        why=(
            "CogVLM/CogVLM2 cannot be built off CUDA: the config builder calls is_bf16_supported() without the "
            "device_type it is given, i.e. for 'cuda', which calls torch.cuda.current_device() and raises on a "
            "host without an NVIDIA driver (the model check fails before the engine starts). For dlinfer devices "
            "the replacement does what the original does with is_bf16_supported(device_type); otherwise it is the "
            "original."
        ),
        versions=SUPPORTED_LMDEPLOY,
        expect_params=("cls", "hf_config", "model_path", "kwargs"),
        contains=("is_bf16_supported()", "num_multi_query_heads", "cfg.cogvlm_style = True", "hf_config.torch_dtype"),
    ),
    Patch(
        name="cogvlm-batched-image-prefill",
        target="lmdeploy.pytorch.backends.graph_runner:GraphRunner.update_model_metas",
        why=(
            "A CogVLM prefill step holding several sequences, one with an image, raises in "
            "CogVLMForCausalLM.update_model_metas: it splits the packed position ids with "
            "Tensor.split(context.q_seqlens), and split takes a list of ints, not a tensor (TypeError; every "
            "backend). With a dlinfer device active and LMDeploy's CogVLM model, the replacement calls it with "
            "q_seqlens as a list (and the model metas it would derive from the tensor); otherwise it is the "
            "original. (Patched on the graph runner, which every runner inherits it from, so that installing "
            "the adaptor does not import LMDeploy's model modules.)"
        ),
        versions=SUPPORTED_LMDEPLOY,
        expect_params=("self", "past_key_values", "inputs_embeds", "context"),
        contains=("self.model.update_model_metas(",),
    ),
    Patch(
        name="executor-activation",
        target="lmdeploy.pytorch.engine.executor:build_executor",
        why=(
            "The single-process executor never calls backend.init(), and LMDEPLOY_ENABLE_CHECK_ENV=0 skips the "
            "env checker: the dlinfer device is activated here, before the model agent creates streams and "
            "allocates on 'cuda'."
        ),
        versions=SUPPORTED_LMDEPLOY,
        also_bound_in=("lmdeploy.pytorch.engine.engine",),
    ),
    Patch(
        name="flash-mla-probe",
        target="lmdeploy.pytorch.configurations.utils:flash_mla_available",
        why=(
            "DeepSeek-V2/V3's config builder asks torch.cuda.get_device_properties(0) whether FlashMLA could run; on a "
            "CPU-only torch (the CPU device) that raises AssertionError and LMDeploy's env checker exits the process "
            "('Torch not compiled with CUDA enabled'). With a dlinfer device active the answer is False (dlinfer "
            "serves no FlashMLA), so the model builds far enough for the adaptor's MLA refusal to name the family."
        ),
        versions=SUPPORTED_LMDEPLOY,
        expect_params=(),
        contains=("get_device_properties(0)",),
        also_bound_in=("lmdeploy.pytorch.configurations.deepseek_v2",),
    ),
    Patch(
        name="moe-build-refusals",
        target="lmdeploy.pytorch.nn.moe.default:FusedMoE.__init__",
        why=(
            "The FusedMoE build spec carries neither the expert biases nor the expert activation, so the adaptor's "
            "Impl could refuse them only at the first forward. With a dlinfer device active the replacement refuses "
            "bias=True (GPT-OSS) and a custom act_func when the layer is built, naming the feature and the device; "
            "otherwise it is the original."
        ),
        versions=SUPPORTED_LMDEPLOY,
        expect_params=("self", "hidden_dim", "ffn_dim", "num_experts", "top_k", "bias", "renormalize", "dtype",
                       "device", "all_reduce", "layer_idx", "act_func"),
    ),
    Patch(
        name="empty-prompt",
        target="lmdeploy.pytorch.engine.engine:Engine._add_message",
        why=(
            "A request with no input tokens trips LMDeploy's own assertion in the engine loop ('Empty input is not "
            "allowed.'), which ends the loop for good: every later request fails with 'The inference engine is "
            "unavailable'. On a dlinfer device the replacement answers such a request alone with "
            "INPUT_LENGTH_ERROR (logged with the reason) and hands the others to the original."
        ),
        versions=SUPPORTED_LMDEPLOY,
        expect_params=("self", "reqs"),
        contains=("Empty input is not allowed.",),
    ),
    Patch(
        name="worker-process-group",
        target="lmdeploy.pytorch.engine.executor.base_worker:WorkerWrapperBase.init_process_group",
        why=(
            "Tensor-parallel workers call dist.init_process_group with get_backend().ccl_backend() outside any "
            "device context, i.e. with the default 'cuda' backend's 'nccl'. The wrapper runs it inside the "
            "worker's own device context, so the plugin's collective backend (gloo, hccl, ...) is used."
        ),
        versions=SUPPORTED_LMDEPLOY,
        expect_params=("self", "rank", "master_addr", "master_port"),
        contains=("init_process_group(rank, self.world_size)", "get_backend(self.device_type)"),
    ),
    Patch(
        name="mp-notifier-wait-async",
        target="lmdeploy.pytorch.engine.executor.mp_executor:Notifier.wait_async",
        why=(
            "tp>1 deadlock on host devices. Every 32 shared-memory messages the mp executor's Notifier meets the "
            "engine and all workers at a multiprocessing Barrier; wait_async waits on it synchronously, blocking "
            "the worker's asyncio loop, the same thread that runs the model forward. On CUDA a forward only "
            "enqueues NCCL work, but gloo all_reduce blocks the host thread until the peer rank joins. When one "
            "worker was already in forward step N (all_reduce) while the other read message 31 first, the latter "
            "blocked in the Barrier waiting for the former, which waited in all_reduce for the latter: a "
            "three-way deadlock (~1 in 10 CPU tp=2 runs). With a dlinfer device active, the replacement waits on "
            "the Barrier in the loop's default executor, so the loop keeps running the forward; otherwise it is "
            "the original."
        ),
        versions=SUPPORTED_LMDEPLOY,
        expect_params=("self",),
        contains=("self.events[self._event_id].wait", "self.bar.wait()", "self._update_event_id()"),
    ),
    Patch(
        name="mp-receive-async",
        target="lmdeploy.pytorch.engine.executor.mp_executor:SharedBuffer.receive_async",
        why=(
            "Same deadlock as mp-notifier-wait-async for messages over one 1 MiB shared block: receive_async reads "
            "the remaining blocks with the synchronous Notifier.wait (event and Barrier waits on the event loop "
            "thread). With a dlinfer device active, the replacement reads them through Notifier.wait_async; "
            "otherwise it is the original."
        ),
        versions=SUPPORTED_LMDEPLOY,
        expect_params=("self",),
        contains=("self.notifier.wait_async()", "self._receive_step0()", "self._receive_step1("),
    ),
    Patch(
        name="mp-worker-entry",
        target="lmdeploy.pytorch.engine.executor.mp_executor:ExecutorProc.start",
        why=(
            "Spawned tp workers import only what unpickling their target needs; without the autoload .pth (a "
            "PYTHONPATH checkout) they never wire dlinfer into LMDeploy and exit in try_import_deeplink while the "
            "engine waits forever. For dlinfer devices the process target becomes dlinfer_lmdeploy.workers."
            "worker_main, which imports the adaptor, then runs LMDeploy's _main_loop, and reports a start-up error "
            "to the engine with LMDeploy's own SIGUSR1; otherwise it is the original."
        ),
        versions=SUPPORTED_LMDEPLOY,
        contains=("target=self._main_loop", "proc.start()"),
    ),
    Patch(
        name="mp-worker-watchdog",
        target="lmdeploy.pytorch.engine.executor.mp_executor:MPExecutor.__init__",
        why=(
            "A worker killed from outside (OOM killer) or dead before its main loop leaves the engine waiting on "
            "its reply forever. For dlinfer devices a watchdog thread polls the worker processes and, when one "
            "exits while the engine runs, logs its name, pid and exit status and raises SIGUSR1 in the main thread. "
            "The SIGUSR1 handler is replaced by one that releases and exits as LMDeploy's does, except while the "
            "executor is already shutting down: a worker failing on its way out of pipe.close() is then logged and "
            "the shutdown continues (LMDeploy's handler ended the process with exit code 1 after its work was done)."
        ),
        versions=SUPPORTED_LMDEPLOY,
        contains=("signal.signal(signal.SIGUSR1, signal_handler)", "ExecutorProc(proc_id=proc_id"),
    ),
    Patch(
        name="mp-release-deadline",
        target="lmdeploy.pytorch.engine.executor.mp_executor:MPExecutor.release",
        why=(
            "release() joins the workers without a deadline; a worker kept alive by its own child processes "
            "(Inductor compile workers) hangs pipe.close(). And after a worker failure (tp=4: a rank failing at "
            "weight load) LMDeploy's SIGUSR1 handler re-entered release on a second signal, and closing the shared "
            "buffers' notifiers blocked in Event.set waiting for killed workers to wake. For dlinfer devices each "
            "worker gets 10 s after SIGTERM, then SIGKILL; a re-entry kills what is left; the buffers are closed and "
            "unlinked. A worker stopped inside Event.set keeps the event's lock (or one killed while waiting stays "
            "a sleeper), so Event.set never returned and the engine's reply waiters, default-executor threads the "
            "interpreter joins at exit, hung the process after its work was done (tp=2 CI). Once every worker has "
            "exited, each event is set and this process's waiters woken directly (orphaned_events); the barrier "
            "is aborted under a 5 s deadline; otherwise it is the original."
        ),
        versions=SUPPORTED_LMDEPLOY,
        expect_params=("self",),
        contains=("proc.close()", "proc.join()"),
    ),
    Patch(
        name="mp-engine-handshake",
        target="lmdeploy.pytorch.engine.mp_engine.zmq_engine:ZMQMPEngine._mp_proc",
        why=(
            "lmdeploy serve runs the engine in a spawned process that publishes its RPC port through a manager "
            "Condition; the parent shuts the manager down as soon as it reads the port, and the engine process, "
            "still waiting for the reply to its Condition release, dies with EOFError (RPCServerDeadError at "
            "start-up; seen on a loaded 2-core host). With a dlinfer device, the replacement ignores only that lost "
            "release reply; otherwise it is the original."
        ),
        versions=SUPPORTED_LMDEPLOY,
        contains=("shared_dict['rpc_server_port'] = server.port", "condition.notify()"),
    ),
    Patch(
        name="ray-device-resource",
        target="lmdeploy.pytorch.ray:get_device_str",
        why=(
            "The ray executor asks for a ray resource per worker and knows only cuda/maca (GPU), ascend (NPU) and "
            "camb (MLU); other names raise 'Unsupported device type'. For dlinfer devices the replacement returns "
            "the plugin's declared Backend.framework.ray_resource, LMDeploy's name for maca/ascend/camb, GPU for a "
            "plugin on torch 'cuda', and 'dlinfer_host' for the CPU device "
            "(dlinfer_lmdeploy.ray_workers.ray_resource); otherwise it is the original. On demand (ray extra)."
        ),
        versions=SUPPORTED_LMDEPLOY,
        expect_params=("device_type",),
        contains=("'GPU'", "'NPU'", "Unsupported device type"),
        also_bound_in=("lmdeploy.pytorch.engine.executor.ray_executor", "lmdeploy.pytorch.engine.mp_engine.ray_engine"),
        requires="ray",
    ),
    Patch(
        name="ray-cluster-init",
        target="lmdeploy.pytorch.ray:init_ray_cluster",
        why=(
            "Without a running ray cluster LMDeploy starts a local one with num_cpus only; a host (CPU) dlinfer "
            "device needs its 'dlinfer_host' resource in it, one unit per rank. For host dlinfer devices the "
            "replacement starts the local cluster with that resource (a cluster started with 'ray start' declares "
            "it itself), then runs the original. On demand (ray extra)."
        ),
        versions=SUPPORTED_LMDEPLOY,
        expect_params=("world_size", "ray_address", "dp", "device_type"),
        contains=("ray.init(", "placement_group_specs"),
        requires="ray",
    ),
    Patch(
        name="ray-worker-class",
        target="lmdeploy.pytorch.engine.executor.ray_executor:RayWorkerWrapper",
        why=(
            "A ray worker process imports only what unpickling its actor class needs, and RayWorkerWrapper is "
            "LMDeploy's: the worker never wires dlinfer in (maca: try_import_deeplink exits with 'No module named "
            "dlinfer.framework'; cpu: 'Unsupported device type'). The actor class becomes "
            "dlinfer_lmdeploy.ray_workers.DlinferRayWorker, a subclass that installs the adaptor and activates the "
            "device before LMDeploy's __init__ (and selects the device ray assigned, warms up on the plugin's "
            "device). On engine stop it first finishes the steps the worker received (it counts the model agent's "
            "_async_step, which LMDeploy's loop awaits per step): the executor's cancel of wait_tasks, and stop_async, "
            "cancel the loop mid-step, and a peer rank inside that step's gloo collectives then blocks its event loop "
            "for good. For other devices it behaves as the original. On demand (ray extra)."
        ),
        versions=SUPPORTED_LMDEPLOY,
        contains=("init_backend(device_type)", "try_import_deeplink(device_type)", "def warmup_dist"),
        requires="ray",
    ),
    Patch(
        name="ray-device-binding",
        target="lmdeploy.pytorch.engine.executor.ray_executor:RayExecutor._init_distributed_environment_by_device",
        why=(
            "LMDeploy calls set_device(index in the placement group) for maca/camb (wrong where ray narrowed the "
            "worker's visible devices to its one assigned device) and raises for other device names. For dlinfer "
            "devices each worker selects the device ray assigned it as a local ordinal of what it sees (nothing on "
            "host devices), and two workers of one node on one device are refused; otherwise it is the original. "
            "On demand (ray extra)."
        ),
        versions=SUPPORTED_LMDEPLOY,
        expect_params=("self", "device_str"),
        contains=("self._sort_workers(driver_ip, self.workers)", "set_device.remote(idx)"),
        requires="ray",
    ),
    Patch(
        name="vl-mm-feature-dtype",
        target="lmdeploy.vl.engine:_resolve_mm_feature_dtype",
        why=(
            "Every VLM request crashes with KeyError: 'float32' when the engine dtype is float32: the function "
            "maps only float16/bfloat16 to a torch dtype for the image features. For a dlinfer host device with "
            "dtype float32 (the CPU fp32 path, the only place float32 is accepted) the replacement returns "
            "torch.float32; otherwise it is the original."
        ),
        versions=SUPPORTED_LMDEPLOY,
        expect_params=("hf_config", "backend_config"),
        contains=("'float16': torch.float16", "'bfloat16': torch.bfloat16", "[backend_dtype]"),
    ),
)

STDLIB_PATCHES: tuple[Patch, ...] = (
    Patch(
        name="thread-host-mode",
        target="threading:Thread._bootstrap_inner",
        why=(
            "CPU device only: torch function modes are thread-local, and LMDeploy runs its engine loop and "
            "to_thread work in other threads; every thread started while the CPU device is active enters the "
            "'cuda'->host redirection mode first and leaves it before the thread ends (a mode left on the "
            "thread-local stack aborts the process when the thread's end races with interpreter shutdown)."
        ),
        versions="CPython 3.10-3.13",
        expect_params=("self",),
    ),
)

_BY_NAME = {p.name: p for p in PATCHES + STDLIB_PATCHES}
_REPLACEMENTS: dict[str, Callable[[Any], Any]] = {}
_APPLIED: dict[str, Any] = {}
_LOCK = threading.Lock()


def replacement(name: str) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    """Register the factory ``original -> replacement`` for the patch ``name``."""

    def register(factory: Callable[[Any], Any]) -> Callable[[Any], Any]:
        if name not in _BY_NAME:
            raise KeyError(f"no patch named {name!r} in the inventory")
        _REPLACEMENTS[name] = factory
        return factory

    return register


def check(name: str) -> None:
    """Probe one patch target (raises PatchTargetMoved)."""
    _BY_NAME[name].probe()


def probe_all(bindings: bool = False) -> list[str]:
    """Probe every LMDeploy patch; return the problems (empty when all targets are in place).

    With ``bindings``, also scan LMDeploy's source for modules that import a target by name
    without being listed (:func:`unlisted_bindings`) and the loaded modules for a binding that
    still holds an original (:func:`stale_bindings`); slower (reads the lmdeploy sources).
    """
    problems = []
    for patch in PATCHES:
        if patch.requires is not None and (not bindings or importlib.util.find_spec(patch.requires) is None):
            continue  # on demand: probed by apply() when used, and by the CLI's full check where installed
        try:
            patch.probe()
        except PatchTargetMoved as exc:
            problems.append(str(exc))
            continue
        if bindings:
            for module_name in unlisted_bindings(patch):
                problems.append(str(patch.moved(f"{module_name} imports the target by name and is not patched")))
    if bindings:
        problems += [f"stale binding (holds the unpatched original): {s}" for s in stale_bindings()]
    return problems


def apply(name: str) -> None:
    patch = _BY_NAME[name]
    with _LOCK:
        if name in _APPLIED:
            return
        patch.probe()
        owner, attr, current = patch.resolve()
        factory = _REPLACEMENTS[name]
        wrap: Any = type(current) if isinstance(current, (staticmethod, classmethod)) else None
        original = current.__func__ if wrap is not None else current
        new = factory(original)
        new.__dlinfer_original__ = original
        setattr(owner, attr, wrap(new) if wrap is not None else new)
        for module_name in patch.also_bound_in:  # a module imported later binds the patched value itself
            module = sys.modules.get(module_name)
            if module is not None and getattr(module, attr, None) is original:
                setattr(module, attr, new)
        _APPLIED[name] = (owner, attr, current, original)


def apply_all() -> None:
    """Probe every LMDeploy patch first (all-or-nothing), then apply them (not the on-demand ones: ``requires``)."""
    problems = probe_all()
    if problems:
        raise PatchTargetMoved("\n".join(problems))
    for patch in PATCHES:
        if patch.requires is None:
            apply(patch.name)


def applied() -> tuple[str, ...]:
    return tuple(_APPLIED)


def describe() -> str:
    lines = []
    for p in PATCHES + STDLIB_PATCHES:
        lines.append(f"{p.name}\n  target:   {p.target}\n  versions: {p.versions}\n  why:      {p.why}")
        if p.also_bound_in:
            lines.append(f"  also in:  {', '.join(p.also_bound_in)}")
    return "\n".join(lines)
