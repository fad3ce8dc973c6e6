"""Times a few W4A16 launch configs at prefill-sized M on one GPU (K4096 N14336, g128, fp16), outputs checked
against the fp64 dequantised-weight oracle. A short probe beside tune_quant_gpu.py."""

# ruff: noqa: B023
import torch
import triton.testing

from dlinfer_maca.kernels.quant import GemmConfig, awq_prepare, w4a16_fwd

K, N, G = 4096, 14336, 128
dev = "cuda"
q = torch.randint(0, 16, (K, N), device=dev, dtype=torch.int32)
z = torch.randint(0, 16, (K // G, N), device=dev, dtype=torch.int32)
s = (torch.rand(K // G, N, device=dev) * 0.02 + 0.005).half()
order = (0, 2, 4, 6, 1, 3, 5, 7)


def pack(v: torch.Tensor) -> torch.Tensor:
    r, c = v.shape
    cols = v.view(r, c // 8, 8).long()
    p = torch.zeros(r, c // 8, dtype=torch.int64, device=dev)
    for i, col in enumerate(order):
        p |= cols[..., col] << (4 * i)
    return torch.where(p >= 2**31, p - 2**32, p).to(torch.int32)


pw, ps, pz = awq_prepare(pack(q), s, pack(z), G)
w = ((q - z.repeat_interleave(G, 0)).double() * s.double().repeat_interleave(G, 0))
CFGS = {
    "default": None,
    "A 128x128x64 w4 unpack1 join2": GemmConfig(128, 128, 64, 4, 3, 1, 1, 1, 8, 2),
    "B 128x128x64 w4 unpack2 join2": GemmConfig(128, 128, 64, 4, 3, 1, 1, 2, 8, 2),
    "C 64x128x64 w4 st4 unpack1 join1": GemmConfig(64, 128, 64, 4, 4, 0, 1, 1, 8, 1),
}
for M in (64, 256, 1024):
    x = torch.randn(M, K, device=dev, dtype=torch.float16)
    ref = x.double() @ w
    cells = []
    for name, cfg in CFGS.items():
        try:
            out = w4a16_fwd(x, pw, ps, pz, None, G, config=cfg)
            err = float((out.double() - ref).norm() / ref.norm())
            us = 1000 * triton.testing.do_bench_cudagraph(lambda: w4a16_fwd(x, pw, ps, pz, None, G, config=cfg), rep=20)
            cells.append(f"{name}: {us:.1f}us err {err:.1e}")
        except Exception as exc:  # noqa: BLE001
            cells.append(f"{name}: {type(exc).__name__} {str(exc)[:80]}")
    print(f"M{M}: " + " | ".join(cells), flush=True)
