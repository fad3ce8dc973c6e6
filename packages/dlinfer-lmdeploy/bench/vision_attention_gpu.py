"""Vision-tower attention on the GPU: torch SDPA (what LMDeploy's InternVL / CogVLM / LLaVA model files call) vs
dlinfer's non-causal ``prefill_attention`` on the maca plugin (what the Qwen-VL family reaches through LMDeploy's
``FlashAttention`` layer).

Decides whether routing the SDPA calls of LMDeploy's vision towers through ``dlinfer.ops.prefill_attention`` would
give a vendor its fused kernel at no cost on maca. The dlinfer column includes the layout change an inventory patch
would add (``[B, H, N, D]`` -> packed ``[B*N, H, D]`` and back), the SDPA column is the call as the model file makes it.
Random bf16 inputs; median of CUDA-graph replays (``triton.testing.do_bench_cudagraph``).

    python bench/vision_attention_gpu.py [--out file.json]
"""

from __future__ import annotations

import argparse
import json

import torch

# (name, images per batch, tokens per image, heads, head size): the vision towers of the seed VLMs at 448x448
SHAPES = (
    ("InternViT-300M (InternVL2-2B), 1 tile", 1, 1025, 16, 64),
    ("InternViT-300M (InternVL2-2B), 32 tiles", 32, 1025, 16, 64),
    ("InternViT-6B (InternVL-Chat-V1-5), 7 tiles", 7, 1025, 25, 128),
    ("EVA2-CLIP-E (CogVLM2), 1 image 1344px", 1, 9217, 16, 112),
    ("EVA2-CLIP-E (CogVLM), 1 image 490px", 1, 1226, 16, 112),
    ("Qwen2-VL-7B ViT, 32 images 448px", 32, 1024, 16, 80),
)


def _time(fn) -> float:  # type: ignore[no-untyped-def]
    import triton

    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median"))
    except Exception:  # noqa: BLE001 - capture can fail on some stacks: fall back to plain timing
        return float(triton.testing.do_bench(fn, warmup=5, rep=50, return_mode="median"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import dlinfer.ops as ops
    import torch.nn.functional as F

    torch.manual_seed(0)
    rows = []
    print(f"{'shape':<46} {'sdpa ms':>9} {'dlinfer ms':>11} {'dlinfer/sdpa':>13} {'max |diff|':>11}")
    for name, b, n, h, d in SHAPES:
        q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        cu = torch.arange(0, (b + 1) * n, n, device="cuda", dtype=torch.int32)

        def sdpa(q=q, k=k, v=v):  # type: ignore[no-untyped-def]
            return F.scaled_dot_product_attention(q, k, v)

        def routed(q=q, k=k, v=v, b=b, n=n, h=h, d=d, cu=cu):  # type: ignore[no-untyped-def]
            pack = [t.transpose(1, 2).reshape(b * n, h, d) for t in (q, k, v)]
            out = ops.prefill_attention(*pack, cu, max_seqlen_q=n, causal=False)
            return out.view(b, n, h, d).transpose(1, 2)

        diff = float((sdpa().float() - routed().float()).abs().max())
        t_sdpa, t_routed = _time(sdpa), _time(routed)
        rows.append({"shape": name, "batch": b, "tokens": n, "heads": h, "head_dim": d, "sdpa_ms": t_sdpa,
                     "dlinfer_ms": t_routed, "ratio_dlinfer_over_sdpa": t_routed / t_sdpa, "max_abs_diff": diff})
        print(f"{name:<46} {t_sdpa:>9.3f} {t_routed:>11.3f} {t_routed / t_sdpa:>13.2f} {diff:>11.4f}")
    backends = {
        "flash": torch.backends.cuda.flash_sdp_enabled(),
        "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
        "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
    }
    print("torch", torch.__version__, "SDPA backends enabled:", backends, "GPU:", torch.cuda.get_device_name())
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "sdpa_backends": backends,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
