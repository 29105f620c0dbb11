"""On a CUDA machine: the AugMix engine's CUDA path against its CPU path, and its GPU throughput.

python3 benchmarks/augmix_cuda_check.py        # prints a small table; not a test (CI has no GPU)
"""

import time

import torch

from dc_pipeline.augmix import AugMix


def main() -> None:
    assert torch.cuda.is_available(), "needs a CUDA device"
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    print("| shape | CPU vs CUDA mean / max abs diff (same draws) | CUDA img/s (batch 256) |")
    print("|---|---:|---:|")
    for c, s in ((1, 28), (3, 32)):
        x = torch.rand(256, c, s, s, generator=torch.Generator().manual_seed(0))
        augmix = AugMix()
        params = augmix.sample_params(256, generator=torch.Generator().manual_seed(1))
        cpu = augmix.apply(x, params)
        gpu = augmix.apply(x.cuda(), params).cpu()
        diff = f"{(cpu - gpu).abs().mean().item():.1e} / {(cpu - gpu).abs().max().item():.1e}"
        xg, g = x.cuda(), torch.Generator(device="cuda").manual_seed(0)
        for _ in range(5):
            augmix(xg, generator=g)
        torch.cuda.synchronize()
        start, n = time.perf_counter(), 50
        for _ in range(n):
            augmix(xg, generator=g)
        torch.cuda.synchronize()
        print(f"| {s}x{s}x{c} | {diff} | {256 * n / (time.perf_counter() - start):,.0f} |")


if __name__ == "__main__":
    main()
