"""VLM serving through LMDeploy on one NVIDIA GPU: dlinfer (maca plugin) against LMDeploy's own CUDA backend.

    python packages/dlinfer-lmdeploy/bench/vlm_e2e_gpu.py --out bench-vlm.json [--models qwen2_vl_7b internvl2_2b]

Two random-weight bf16 VLMs of real shape are built on the GPU (no downloads; a char-level tokenizer padded to the
real vocabulary size):

* ``qwen2_vl_7b``: Qwen2-VL-7B — ViT of 32 blocks, 1280 wide, 16 heads (head size 80), 2x2 merge; LLM 3584 wide,
  28 layers, 28/4 heads of 128, MLP 18944, vocabulary 152064, mrope. A 448x448 image is 1024 patches, 256 tokens.
* ``internvl2_2b``: InternVL2-2B in its chat format — InternViT-300M (24 blocks, 1024 wide, 16 heads of 64,
  448px tiles) + InternLM2-1.8B (2048 wide, 24 layers, 16/8 heads of 128, MLP 8192, vocabulary 92553); dynamic
  tiling (a 448x448 image is one tile, 256 tokens).

Then, each in its own process, for device_type in (maca, cuda) x mode in (eager, graph): 32 requests, each with
its own 448x448 image (PIL, fixed seeds) and a short text, submitted together; 128 new tokens each, greedy,
ignore_eos. Reported: output tokens per second over the whole batch (first submission to last token), and the
time to first token of each request (median and max), measured from the submission of the batch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

NUM_REQUESTS = 32
NEW_TOKENS = 128
IMAGE_SIZE = (448, 448)


def _tokenizer(path: Path, vocab: int, specials: tuple[str, ...], template: str) -> dict[str, int]:
    from dlinfer_lmdeploy.testing import tiny_models

    tok = tiny_models.build_tokenizer(path, vocab_size=vocab - len(specials))
    tok.add_special_tokens({"additional_special_tokens": list(specials)})
    tok.chat_template = template
    tok.save_pretrained(str(path))
    return {s: tok.convert_tokens_to_ids(s) for s in specials}


def _random_(model: object) -> None:
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():  # type: ignore[attr-defined]
            if "norm" in name and p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)


def build_qwen2_vl_7b(path: Path) -> Path:
    import torch
    import transformers as tf

    from dlinfer_lmdeploy.testing import tiny_vlms

    if (path / "config.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    vocab = 152064
    ids = _tokenizer(path, vocab, tiny_vlms.QWEN_SPECIALS, tiny_vlms.QWEN_CHAT_TEMPLATE)
    text = dict(vocab_size=vocab, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768, rms_norm_eps=1e-6,
                bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0})
    vision = dict(depth=32, embed_dim=1280, hidden_size=3584, num_heads=16, mlp_ratio=4, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, hidden_act="gelu")
    config = tf.Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                              video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                              vision_end_token_id=ids["<|vision_end|>"])
    config.architectures = ["Qwen2VLForConditionalGeneration"]
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = tf.Qwen2VLForConditionalGeneration(config).to(torch.bfloat16)
    _random_(model)
    tiny_vlms.save_model(model, path, torch.bfloat16)
    del model
    tokenizer = tf.AutoTokenizer.from_pretrained(str(path))
    image_processor = tf.Qwen2VLImageProcessor()  # the real defaults: 448x448 -> 32x32 patches -> 256 tokens
    tf.Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                        video_processor=tf.Qwen2VLVideoProcessor()).save_pretrained(str(path))
    return path


def build_internvl2_2b(path: Path) -> Path:
    import torch
    import transformers as tf

    from dlinfer_lmdeploy.testing import tiny_internvl

    if (path / "config.json").exists():
        return path
    # the tiny builder's geometry constants, at InternVL2-2B's size (448px tiles of 14px patches: 256 tokens a tile)
    tiny_internvl.IMAGE_SIZE, tiny_internvl.TOKENS_PER_TILE = 448, 256
    vocab = 92553
    tiny_internvl.tiny_models.VOCAB_SIZE = vocab  # the builder's tokenizer: char-level ids, padding, 4 specials
    vision = tf.InternVLVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=448,
        patch_size=14, attention_bias=True, use_qk_norm=False, norm_type="layer_norm", layer_norm_eps=1e-6,
        hidden_act="gelu", use_mean_pooling=True)
    text = dict(vocab_size=vocab, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=32768)
    torch.set_default_device("cuda")  # random init on the GPU (2.2B parameters)
    try:
        tiny_internvl._build_chat(path, dtype=torch.bfloat16, seed=0, vision=vision, text=text,
                                  dynamic=dict(dynamic_image_size=True, use_thumbnail=True, min_dynamic_patch=1,
                                               max_dynamic_patch=12))
    finally:
        torch.set_default_device(None)
    return path


BUILDERS = {"qwen2_vl_7b": build_qwen2_vl_7b, "internvl2_2b": build_internvl2_2b}


def run_one(model_dir: str, device: str, mode: str) -> dict[str, object]:
    import torch
    from lmdeploy import PytorchEngineConfig

    import dlinfer_lmdeploy  # noqa: F401
    from dlinfer_lmdeploy.testing import vlm

    cfg = PytorchEngineConfig(device_type=device, eager_mode=(mode == "eager"), max_batch_size=NUM_REQUESTS,
                              session_len=4096, cache_max_entry_count=0.5, max_prefill_token_num=8192)
    t0 = time.perf_counter()
    with vlm.open_pipeline(Path(model_dir), cfg) as pipe:
        startup = time.perf_counter() - t0
        requests = [vlm.Request(f"Describe picture {i}.", (vlm.make_image(1000 + i, IMAGE_SIZE),))
                    for i in range(NUM_REQUESTS)]
        gen = vlm.gen_config(NEW_TOKENS)
        pipe([r.messages() for r in requests[:4]], gen_config=vlm.gen_config(8))  # warm-up
        torch.cuda.synchronize()
        first: dict[int, float] = {}
        counts: dict[int, int] = {}
        t0 = time.perf_counter()
        for out in pipe.stream_infer([r.messages() for r in requests], gen_config=gen):
            n = len(out.token_ids or [])
            if n:
                first.setdefault(out.index, time.perf_counter() - t0)
                counts[out.index] = counts.get(out.index, 0) + n
        elapsed = time.perf_counter() - t0
    n_out = sum(counts.values())
    ttft = sorted(first.values())
    return {"device_type": device, "mode": mode, "gpu": torch.cuda.get_device_name(0), "startup_s": round(startup, 1),
            "requests": NUM_REQUESTS, "output_tokens": n_out, "elapsed_s": round(elapsed, 3),
            "output_tok_per_s": round(n_out / elapsed, 1), "ttft_median_ms": round(statistics.median(ttft) * 1e3, 1),
            "ttft_max_ms": round(ttft[-1] * 1e3, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench-vlm.json")
    ap.add_argument("--models", nargs="*", default=list(BUILDERS))
    ap.add_argument("--devices", nargs="*", default=["maca", "cuda"])
    ap.add_argument("--modes", nargs="*", default=["eager", "graph"])
    ap.add_argument("--workdir", default="/tmp/dlinfer-vlm-bench")
    ap.add_argument("--timeout", type=int, default=240)
    ap.add_argument("--child", nargs=3, metavar=("MODEL_DIR", "DEVICE", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_one(*args.child)), flush=True)
        return 0
    results: list[dict[str, object]] = []
    for name in args.models:
        t0 = time.perf_counter()
        path = BUILDERS[name](Path(args.workdir) / name)
        print(f"[{name}] built in {time.perf_counter() - t0:.0f}s", flush=True)
        for mode in args.modes:
            for device in args.devices:
                cmd = [sys.executable, __file__, "--child", str(path), device, mode]
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                    row = json.loads(lines[-1][7:]) if lines else {"device_type": device, "mode": mode,
                                                                   "error": proc.stderr[-1500:]}
                except subprocess.TimeoutExpired as exc:
                    row = {"device_type": device, "mode": mode, "error": f"timeout {args.timeout}s",
                           "stdout": str(exc.stdout)[-500:]}
                row["model"] = name
                results.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n{'model':<14} {'mode':<6} {'maca tok/s':>11} {'cuda tok/s':>11} {'ratio':>6} "
          f"{'maca TTFT med/max ms':>21} {'cuda TTFT med/max ms':>21}")
    for name in args.models:
        for mode in args.modes:
            by = {r["device_type"]: r for r in results if r["model"] == name and r["mode"] == mode}
            m, c = by.get("maca", {}), by.get("cuda", {})
            if "output_tok_per_s" in m and "output_tok_per_s" in c:
                print(f"{name:<14} {mode:<6} {m['output_tok_per_s']:>11} {c['output_tok_per_s']:>11} "
                      f"{m['output_tok_per_s'] / c['output_tok_per_s']:>6.2f} "
                      f"{m['ttft_median_ms']:>10}/{m['ttft_max_ms']:<10} "
                      f"{c['ttft_median_ms']:>10}/{c['ttft_max_ms']:<10}")
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
