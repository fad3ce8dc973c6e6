"""VLM requests through ``lmdeploy.pipeline`` on a dlinfer device, and the HF oracle fed what LMDeploy fed the model.

* Images are made locally with PIL from a fixed seed (:func:`make_image`): random colour blocks plus a gradient,
  so that mirroring changes them (:func:`mirror`).
* :func:`generate` submits a batch of :class:`Request` together (text-only requests allowed) and returns, per
  request, the greedy tokens and the :class:`Captured` prompt input LMDeploy built for it: the ``input_ids`` and
  the ``multimodal`` items (pixel values, grid sizes, offsets ...), copied when LMDeploy's
  ``MultimodalProcessor.get_prompt_input`` returns them (the engine later pops ``multimodal``).
* :func:`hf_greedy` and :func:`teacher_forced` run the HF model on exactly those inputs. A family turns the
  captured items into HF keyword arguments with a hook registered by :func:`register_oracle` (keyed by the
  oracle checkpoint's ``architectures[0]``); without one, :func:`default_oracle_inputs` concatenates the
  ``pixel_values`` of the items.
  :func:`teacher_forced_fn` plugs the latter into ``bf16_check.check_against_hf`` (bf16 VLM runs on GPUs and
  vendor simulators).
* :data:`SCENARIOS`: the requests every VLM row runs (text only, one image, two images in one prompt, a text-only
  request batched with two image requests, the mirrored image); :func:`run_row` runs them all in one engine and
  counts each scenario's ``dlinfer.ops`` calls (:func:`count_ops`); a family declares the calls of its vision
  tower with :func:`register_vision_calls`.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import importlib
import json
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dlinfer_lmdeploy.testing.model_table import ModelRow, oracle_path

Image = Any  # PIL.Image.Image (PIL is imported lazily)


def make_image(seed: int, size: tuple[int, int] = (84, 56)) -> Image:
    """A ``size`` (width, height) RGB image: 7x7 px colour blocks drawn from ``seed`` on a left-to-right
    gradient, so that it is not mirror-symmetric."""
    from PIL import Image as PILImage

    g = torch.Generator().manual_seed(seed)
    w, h = size
    blocks = torch.randint(0, 256, (3, (h + 6) // 7, (w + 6) // 7), generator=g, dtype=torch.int32)
    pixels = blocks.repeat_interleave(7, 1).repeat_interleave(7, 2)[:, :h, :w]
    ramp = torch.linspace(0, 255, w, dtype=torch.float32).to(torch.int32)
    pixels = (pixels + ramp).clamp(0, 255) // 2 + ramp // 2
    return PILImage.fromarray(pixels.permute(1, 2, 0).to(torch.uint8).numpy(), "RGB")


def mirror(image: Image) -> Image:
    from PIL import ImageOps

    return ImageOps.mirror(image)


@dataclass(frozen=True)
class Request:
    text: str
    """unique within a batch (it identifies the request's captured input)"""
    images: tuple[Image, ...] = ()

    def messages(self) -> list[dict[str, Any]]:
        """OpenAI-style messages: the text first, then the images."""
        content: list[dict[str, Any]] = [{"type": "text", "text": self.text}]
        content += [{"type": "image_data", "image_data": {"data": im}} for im in self.images]
        return [{"role": "user", "content": content}]


@dataclass
class Captured:
    """What LMDeploy fed the model for one request."""

    input_ids: list[int]
    multimodal: list[dict[str, Any]] = field(default_factory=list)
    """per image: LMDeploy's item (``pixel_values``, ``image_grid_thw``, ``offset`` ... as the family's processor
    wrote them), in prompt order"""


@dataclass(frozen=True)
class Result:
    request: Request
    tokens: list[int]
    captured: Captured


def _request_text(prompt: Any) -> str | None:
    if isinstance(prompt, list):
        for message in prompt:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                texts = [c.get("text") for c in content if isinstance(c, dict) and c.get("type") == "text"]
                if texts:
                    return "".join(texts)
            elif isinstance(content, str):
                return content
    return prompt if isinstance(prompt, str) else None


def _copy_items(items: Any) -> list[dict[str, Any]]:
    def one(v: Any) -> Any:
        return v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)

    return sorted(({k: one(v) for k, v in item.items()} for item in items or []), key=_offset)


def _offset(item: dict[str, Any]) -> int:
    """An item's first token position: ``offset`` is an int (legacy preprocess) or (start, end) (new-style)."""
    offset = item.get("offset", 0)
    return int(offset[0] if isinstance(offset, (tuple, list)) else offset)


@contextlib.contextmanager
def capture_prompt_inputs(batch: int = 0) -> Iterator[dict[str, Captured]]:
    """Within the block, every prompt input LMDeploy builds is copied into the yielded dict, keyed by the
    request's text. ``batch`` > 0: each request is handed on to the engine only once ``batch`` requests are
    preprocessed, so that requests submitted together reach the scheduler together (a text-only request is
    preprocessed long before an image request and would otherwise be prefilled alone)."""
    import asyncio

    from lmdeploy.serve.processors.multimodal import MultimodalProcessor

    captured: dict[str, Captured] = {}
    original = MultimodalProcessor.get_prompt_input
    ready: list[asyncio.Event] = []  # created on the engine's event loop

    async def get_prompt_input(self: Any, prompt: Any, *args: Any, **kwargs: Any) -> Any:
        text = _request_text(prompt)
        out = await original(self, prompt, *args, **kwargs)
        if text is not None:
            ids = out["input_ids"]
            captured[text] = Captured(
                input_ids=[int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)],
                multimodal=_copy_items(out.get("multimodal")),
            )
        if batch > 0:
            if not ready:
                ready.append(asyncio.Event())
            if len(captured) >= batch:
                ready[0].set()
            await asyncio.wait_for(ready[0].wait(), timeout=120)
        return out

    MultimodalProcessor.get_prompt_input = get_prompt_input  # type: ignore[method-assign]
    try:
        yield captured
    finally:
        MultimodalProcessor.get_prompt_input = original  # type: ignore[method-assign]


@contextlib.contextmanager
def open_pipeline(path: Path, engine: Any) -> Iterator[Any]:
    """``lmdeploy.pipeline`` for a VLM checkpoint; ``trust_remote_code`` when the checkpoint ships its own code
    (``auto_map`` in its config: e.g. the config class of the InternVL chat format, written by our builder)."""
    from lmdeploy import pipeline

    remote = "auto_map" in json.loads((Path(path) / "config.json").read_text())
    pipe = pipeline(str(path), backend_config=engine, log_level="ERROR", trust_remote_code=remote)
    try:
        yield pipe
    finally:
        pipe.close()


def gen_config(max_new_tokens: int, logprobs: int | None = None) -> Any:
    from lmdeploy import GenerationConfig

    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, top_k=1, ignore_eos=True, logprobs=logprobs
    )


def generate(pipe: Any, requests: Sequence[Request], max_new_tokens: int) -> list[Result]:
    """Greedy, ignore_eos, the model's chat template; all requests submitted together (batched by the engine)."""
    results, _ = _generate(pipe, requests, max_new_tokens, None)
    return results


def generate_with_logits(
    pipe: Any, requests: Sequence[Request], max_new_tokens: int, topk: int = 5
) -> tuple[list[Result], list[list[dict[int, float]]]]:
    """Like :func:`generate`, plus the engine's raw logits of its ``topk`` best tokens per step (engine built with
    ``logprobs_mode="raw_logits"``), for ``bf16_check``."""
    return _generate(pipe, requests, max_new_tokens, topk)


def _generate(
    pipe: Any, requests: Sequence[Request], max_new_tokens: int, topk: int | None
) -> tuple[list[Result], list[list[dict[int, float]]]]:
    texts = [r.text for r in requests]
    assert len(set(texts)) == len(texts), f"request texts must be unique within a batch: {texts}"
    with capture_prompt_inputs(batch=len(requests)) as captured:
        outs = pipe([r.messages() for r in requests], gen_config=gen_config(max_new_tokens, topk))
    failed = [(r.text, o.finish_reason) for r, o in zip(requests, outs, strict=True) if o.finish_reason == "error"]
    assert not failed, f"LMDeploy failed these requests (see its log): {failed}"
    missing = [t for t in texts if t not in captured]
    assert not missing, f"LMDeploy built no prompt input for {missing}"
    results = [Result(r, list(o.token_ids), captured[r.text]) for r, o in zip(requests, outs, strict=True)]
    return results, [[dict(step) for step in (o.logprobs or [])] for o in outs]


# --- the HF oracle ---------------------------------------------------------------------------------------------

OracleInputs = Callable[[list[dict[str, Any]], torch.Tensor, Any], dict[str, Any]]
"""(captured multimodal items, input_ids [1, L], oracle HF config) -> extra keyword arguments of the HF model's
forward/generate for those ``input_ids`` (``L`` may include generated tokens after the prompt)"""
OracleLoader = Callable[[Path, torch.dtype], Any]


@dataclass(frozen=True)
class OracleHooks:
    inputs: OracleInputs
    load: OracleLoader | None = None
    """loads the oracle model from ``oracle_path`` (default: ``transformers.<architectures[0]>``)"""


_ORACLES: dict[str, OracleHooks] = {}


def register_oracle(architecture: str, inputs: OracleInputs, load: OracleLoader | None = None) -> None:
    """Register how the HF oracle of ``architecture`` (the oracle checkpoint's ``architectures[0]``) is fed."""
    _ORACLES[architecture] = OracleHooks(inputs, load)


def default_oracle_inputs(items: list[dict[str, Any]], input_ids: torch.Tensor, config: Any) -> dict[str, Any]:
    """``pixel_values`` of the items concatenated in prompt order (no extras)."""
    if not items:
        return {}
    return {"pixel_values": torch.cat([it["pixel_values"] for it in items])}


def _architecture(path: Path) -> str:
    return json.loads((path / "config.json").read_text())["architectures"][0]


def oracle_hooks(row: ModelRow, path: Path) -> OracleHooks:
    importlib.import_module(row.builder.partition(":")[0])  # the builder's module registers its family's hooks
    return _ORACLES.get(_architecture(oracle_path(path)), OracleHooks(default_oracle_inputs))


def load_oracle(row: ModelRow, path: Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Any:
    import transformers

    opath = oracle_path(path)
    hooks = oracle_hooks(row, path)
    if hooks.load is not None:
        model = hooks.load(opath, dtype)
    else:
        model = getattr(transformers, _architecture(opath)).from_pretrained(str(opath), dtype=dtype)
    return model.to(device).eval()


def _banned(model: Any) -> list[int]:
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None else (
        model.config.get_text_config().eos_token_id
    )
    return [eos] if isinstance(eos, int) else list(eos or [])


def _extras(hooks: OracleHooks, captured: Captured, ids: torch.Tensor, model: Any) -> dict[str, Any]:
    extras = hooks.inputs(captured.multimodal, ids, model.config)
    dtype = next(model.parameters()).dtype
    return {
        k: (v.to(ids.device, dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else
            v.to(ids.device) if isinstance(v, torch.Tensor) else v)
        for k, v in extras.items()
    }  # fmt: skip


def hf_greedy(row: ModelRow, path: Path, captured: Sequence[Captured], max_new_tokens: int) -> list[list[int]]:
    """HF greedy tokens for each captured request (one at a time, fp32), mirroring LMDeploy's ``ignore_eos``."""
    model = load_oracle(row, path)
    hooks = oracle_hooks(row, path)
    banned = _banned(model)
    outs = []
    with torch.no_grad():
        for cap in captured:
            ids = torch.tensor([cap.input_ids])
            y = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                **_extras(hooks, cap, ids, model),
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
                suppress_tokens=banned or None,
            )
            outs.append(y[0, ids.shape[1] :].tolist())
    return outs


def teacher_forced(
    row: ModelRow,
    path: Path,
    captured: Sequence[Captured],
    runs: Sequence[tuple[list[int], list[int]]],
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor]:
    """HF logits for VLM generations made elsewhere (``hf_oracle.teacher_forced`` for VLMs): for each
    ``(prompt_ids, generated_ids)`` with its captured input, one forward over ``prompt + generated`` with the
    captured images -> fp32 ``[len(generated), V]`` on ``device``; EOS at -inf (LMDeploy bans it)."""
    model = load_oracle(row, path, dtype, device)
    hooks = oracle_hooks(row, path)
    banned = _banned(model)
    out = []
    with torch.no_grad():
        for cap, (prompt, generated) in zip(captured, runs, strict=True):
            assert list(prompt) == cap.input_ids, "teacher_forced: prompt ids differ from the captured input"
            ids = torch.tensor([list(prompt) + list(generated)], device=device)
            logits = model(input_ids=ids, **_extras(hooks, cap, ids, model)).logits
            logits = logits[0, len(prompt) - 1 : len(prompt) - 1 + len(generated)].float()
            logits[:, banned] = float("-inf")
            out.append(logits)
    del model
    return out


def teacher_forced_fn(
    row: ModelRow, path: Path, captured: Sequence[Captured]
) -> Callable[..., list[torch.Tensor]]:
    """``(runs, device=, dtype=) -> logits``: the VLM teacher forcing for ``bf16_check.check_against_hf``."""

    def run(runs: Sequence[tuple[list[int], list[int]]], *, device: str, dtype: torch.dtype) -> list[torch.Tensor]:
        return teacher_forced(row, path, captured, runs, device=device, dtype=dtype)

    return run


# --- scenarios -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VlmScenario:
    name: str
    requests: Callable[[], tuple[Request, ...]]
    """built lazily (PIL)"""
    doc: str


def _one() -> tuple[Request, ...]:
    return (Request("Describe the image.", (make_image(1),)),)


def _two() -> tuple[Request, ...]:
    return (Request("Compare the two images.", (make_image(2, (56, 84)), make_image(3))),)


def _mixed() -> tuple[Request, ...]:
    return (
        Request("What is in the picture?", (make_image(4),)),
        Request("Hello world, tell me a story about a fox."),
        Request("Which colour is on the left?", (make_image(5, (112, 56)),)),
    )


def _mirrored() -> tuple[Request, ...]:
    return (Request("Describe the image.", (mirror(make_image(1)),)),)


def _text() -> tuple[Request, ...]:
    return (Request("Describe the image."),)


SCENARIOS: tuple[VlmScenario, ...] = (
    VlmScenario(
        "text_only",
        _text,
        "one_image's text without the image (also the baseline of the vision tower's op calls: one_image's "
        "calls minus these)",
    ),
    VlmScenario("one_image", _one, "one image, one prompt"),
    VlmScenario("two_images", _two, "two images of different shapes in one prompt"),
    VlmScenario("text_batched_with_images", _mixed, "a text-only request submitted together with two image requests"),
    VlmScenario(
        "mirrored_image",
        _mirrored,
        "one_image's request with the image mirrored: the tokens must equal the oracle's and differ from "
        "one_image's (the image is really used)",
    ),
)
NEW_TOKENS = 10


VisionCalls = Callable[[dict[str, Any]], dict[str, int]]
"""checkpoint config.json (dict) -> op -> the exact number of ``dlinfer.ops`` calls the vision tower (with its
projector) makes for one image (ops not named: not checked; ``"prefill_attention:noncausal"`` counts the
non-causal calls)"""
_VISION_CALLS: dict[str, VisionCalls] = {}


def register_vision_calls(architecture: str, calls: VisionCalls) -> None:
    """Declare the op calls of ``architecture``'s vision tower (``architecture``: the row's, LMDeploy's)."""
    _VISION_CALLS[architecture] = calls


def expected_vision_calls(row: ModelRow, path: Path) -> dict[str, int]:
    importlib.import_module(row.builder.partition(":")[0])
    if row.architecture not in _VISION_CALLS:
        raise LookupError(
            f"no vision op-call expectation for {row.architecture}: its builder module must call "
            "vlm.register_vision_calls"
        )
    return _VISION_CALLS[row.architecture](json.loads((Path(path) / "config.json").read_text()))


@dataclass
class RowRun:
    """Every scenario of one VLM row, run in one engine."""

    results: dict[str, list[Result]]
    calls: dict[str, collections.Counter[str]]
    """scenario -> its ``dlinfer.ops`` calls"""
    seconds: dict[str, float]
    """scenario -> wall time (``"engine"``: engine start)"""
    logits: dict[str, list[list[dict[int, float]]]] = field(default_factory=dict)
    """scenario -> per request, the engine's top-k raw logits per step (``run_row(logits=k)``)"""

    def vision_calls(self) -> dict[str, int]:
        """The calls of one image's vision tower: one_image's minus text_only's (same steps, same LLM work)."""
        one, text = self.calls["one_image"], self.calls["text_only"]
        return {op: one[op] - text[op] for op in set(one) | set(text) if one[op] != text[op]}


def run_row(
    path: Path, engine: Any, new_tokens: int = NEW_TOKENS, logits: int | None = None, skip: Collection[str] = ()
) -> RowRun:
    """Run :data:`SCENARIOS` in order through one ``lmdeploy.pipeline`` (``engine``: a PytorchEngineConfig);
    ``logits``: also record the engine's top-``logits`` raw logits (engine built with
    ``logprobs_mode="raw_logits"``); ``skip``: scenarios not run (the row's ``skipped``)."""
    import time

    results: dict[str, list[Result]] = {}
    calls: dict[str, collections.Counter[str]] = {}
    t0 = time.perf_counter()
    with open_pipeline(path, engine) as pipe:
        seconds = {"engine": time.perf_counter() - t0}
        run = RowRun(results, calls, seconds)
        for sc in SCENARIOS:
            if sc.name in skip:
                continue
            t0 = time.perf_counter()
            with count_ops() as counts:
                res, top = _generate(pipe, sc.requests(), new_tokens, logits)
            seconds[sc.name] = time.perf_counter() - t0
            results[sc.name], calls[sc.name] = res, counts
            run.logits[sc.name] = top
    return run


@contextlib.contextmanager
def count_ops() -> Iterator[collections.Counter[str]]:
    """Counts ``dlinfer.ops`` calls within the block; non-causal calls (``causal=False``) are also counted as
    ``<op>:noncausal``, and the sequences they attend over (``cu_seqlens_q``: windows of a windowed vision block,
    images of a batch) as ``<op>:noncausal_seqs``."""
    import dlinfer.ops
    from dlinfer.spec import SPECS

    counts: collections.Counter[str] = collections.Counter()
    originals = {name: getattr(dlinfer.ops, name) for name in SPECS}

    def spy(name: str, fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            if kwargs.get("causal") is False:
                counts[f"{name}:noncausal"] += 1
                cu_seqlens = args[3] if len(args) > 3 else kwargs.get("cu_seqlens_q")
                if isinstance(cu_seqlens, torch.Tensor):
                    counts[f"{name}:noncausal_seqs"] += cu_seqlens.numel() - 1
            return fn(*args, **kwargs)

        return call

    for name, fn in originals.items():
        setattr(dlinfer.ops, name, spy(name, fn))
    try:
        yield counts
    finally:
        for name, fn in originals.items():
            setattr(dlinfer.ops, name, fn)
