"""Small helpers shared by the kernel launchers."""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl


@functools.cache
def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``). Read once: Triton decides it
    when a kernel is defined (``triton.jit`` at import), so a later change of the variable does not switch modes."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _patch_interpreter_index() -> None:
    """Triton 3.x's interpreter converts loop bounds with ``int(ndarray)``, which numpy >= 2.4
    refuses for 1-element 1-d arrays; make ``__index__`` take the single element instead."""
    try:
        from triton.runtime import interpreter as _interp
    except ImportError:  # pragma: no cover - other Triton layouts
        return
    orig = getattr(_interp, "_patch_lang_tensor", None)
    if orig is None or getattr(orig, "_dlinfer_patched", False):
        return

    def patched(tensor, scope):  # type: ignore[no-untyped-def]
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._dlinfer_patched = True  # type: ignore[attr-defined]
    _interp._patch_lang_tensor = patched

    # bf16 is stored as raw uint16 in the interpreter and its dot multiplies the bit patterns
    builder = getattr(_interp, "InterpreterBuilder", None)
    dot = getattr(builder, "create_dot", None)
    if dot is not None and hasattr(_interp, "_convert_float"):
        import numpy as np

        def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):  # type: ignore[no-untyped-def]
            if a.dtype.scalar == tl.bfloat16 or b.dtype.scalar == tl.bfloat16:
                def up(h):  # type: ignore[no-untyped-def]
                    if h.dtype.scalar != tl.bfloat16:
                        return h
                    data = _interp._convert_float(h.data, tl.bfloat16, tl.float32, None).view(np.float32)
                    return _interp.TensorHandle(data, tl.float32)
                a, b = up(a), up(b)
            return dot(self, a, b, d, input_precision, max_num_imprecise_acc)

        builder.create_dot = create_dot

    # fp32 -> bf16 casts truncate in the interpreter; the GPU rounds to nearest even
    cast = getattr(builder, "cast_impl", None)
    if cast is not None:
        import numpy as np

        def cast_impl(self, src, dst_type):  # type: ignore[no-untyped-def]
            s, d = src.dtype.scalar, dst_type.scalar
            if d == tl.bfloat16 and s != tl.bfloat16:  # any -> fp32 -> bf16 (round to nearest even)
                f32 = src if s == tl.float32 else cast(self, src, tl.float32)
                bits = np.ascontiguousarray(f32.data, dtype=np.float32).view(np.uint32).astype(np.uint64)
                rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
                return _interp.TensorHandle(rounded.reshape(np.shape(src.data)), d)
            if s == tl.bfloat16 and d not in (tl.bfloat16, tl.float32):  # bf16 -> fp32 -> anything
                return cast(self, cast(self, src, tl.float32), dst_type)
            return cast(self, src, dst_type)

        builder.cast_impl = cast_impl


if interpreting():
    _patch_interpreter_index()


def next_pow2(n: int) -> int:
    """The smallest power of two >= max(n, 1). Plain Python: Triton 3.6's ``triton.next_power_of_2`` and
    ``triton.cdiv`` are constexpr functions whose host-side call costs about 1.7 us (argument unwrapping), against
    0.2 us here; launchers call these several times per op."""
    return 1 << (max(int(n), 1) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for ints (``triton.cdiv`` without its host-call overhead)."""
    return -(-a // b)


@functools.lru_cache(maxsize=16)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (a small constant on the CPU interpreter)."""
    if device.type != "cuda":
        return 4
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=16)
def _nvidia(index: int) -> bool:
    return "NVIDIA" in torch.cuda.get_device_name(index)


def inline_ptx(device: torch.device) -> bool:
    """Whether kernels may carry inline PTX on ``device``: an NVIDIA GPU only. PTX is NVIDIA's ISA; MetaX MACA and
    other CUDA-compatible devices compile Triton to their own, and the interpreter runs no assembly."""
    if interpreting() or device.type != "cuda":
        return False
    return _nvidia(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=16)
def _capability_major(index: int) -> int:
    return torch.cuda.get_device_capability(index)[0]


def programmatic_launch(device: torch.device) -> bool:
    """Whether a kernel may be launched as a programmatic dependent of the previous one (PDL: ``launch_pdl``,
    ``griddepcontrol``; NVIDIA sm_90+). Its launch then overlaps the previous kernel's tail, and it waits for that
    kernel's completion with ``tl.extra.cuda.gdc_wait`` before reading its output. PTX-only, like
    :func:`inline_ptx`; and only with a Triton that has both (``launch_pdl``, ``tl.extra.cuda.gdc_wait``: Triton 3.3
    and later; the package accepts Triton 3.0)."""
    if not inline_ptx(device) or not _triton_has_pdl():
        return False
    return _capability_major(device.index if device.index is not None else torch.cuda.current_device()) >= 9


@functools.lru_cache(maxsize=1)
def _triton_has_pdl() -> bool:
    cuda_extra = getattr(tl.extra, "cuda", None)
    if cuda_extra is None or not hasattr(cuda_extra, "gdc_wait") or not hasattr(cuda_extra, "gdc_launch_dependents"):
        return False
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return "launch_pdl" in getattr(CUDAOptions, "__dataclass_fields__", {})


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: exact fp32 for fp32 inputs, tensor cores otherwise."""
    return "ieee" if dtype == torch.float32 else "tf32"


_COUNTERS: dict[str, torch.Tensor] = {}
_RETIRED: list[torch.Tensor] = []  # grown-out buffers stay alive: a captured CUDA graph may still point at them


def arrival_counters(device: torch.device, n: int) -> torch.Tensor | None:
    """int32 arrival counters for in-kernel reductions (split-K GEMM tiles, split decode attention): one buffer
    per device, zero at rest (the last program to arrive resets its counter, see :func:`last_arrival`). Kernels
    that use them must not run concurrently on two streams of one device (LMDeploy runs the model on one
    stream; a CUDA graph captures on its own stream but replays in order). None when the buffer would have to
    be allocated or grown during CUDA-graph capture: the caller then reduces in a separate pass."""
    key = str(device)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < n:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None
        if buf is not None:
            _RETIRED.append(buf)
        buf = _COUNTERS[key] = torch.zeros(max(n, 1 << 16), dtype=torch.int32, device=device)
    return buf


@triton.jit
def last_arrival(cnt_ptr, idx, n_arrivals):
    """True in the last of the ``n_arrivals`` programs sharing counter ``idx`` to get here, after all of them
    stored their partials (release/acquire at GPU scope); that program resets the counter to zero."""
    tl.debug_barrier()  # every thread's partial stores precede the release below
    old = tl.atomic_add(cnt_ptr + idx, 1, sem="acq_rel", scope="gpu")
    last = old == n_arrivals - 1
    if last:
        tl.atomic_xchg(cnt_ptr + idx, 0, sem="relaxed", scope="gpu")
    return last


@triton.jit
def round_half_even(x):
    """Round fp32 to the nearest integer, ties to even (matches ``torch.round``)."""
    r = tl.floor(x + 0.5)
    tie = (r - x) == 0.5
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where(tie & odd, r - 1.0, r)


@triton.jit
def tanh_f32(x):
    """tanh via exp2, stable for large |x| (the interpreter has no libdevice)."""
    e = tl.exp2(-2.8853900817779268 * tl.abs(x))  # exp(-2|x|)
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)
