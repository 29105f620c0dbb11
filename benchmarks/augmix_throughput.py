"""AugMix throughput: the batched engine against per-image torchvision and a PIL reference.

Run from the repository root: ``python benchmarks/augmix_throughput.py``. It measures,
in one run and on the same images (sklearn digits, 28x28x1 and coloured 32x32x3,
batch 256, ``torch.set_num_threads(2)``):

* ``dc_pipeline.augmix.AugMix`` on the whole batch (float tensors), with its default
  backend on the CPU (``fused``: the Numba-compiled per-image loop) and with the eager
  PyTorch backend (``torch``, the one that runs on GPUs);
* ``torchvision.transforms.v2.AugMix`` called per image on uint8 tensors, configured
  as in the paper (severity 3, width 3, depth -1, alpha 1, ``all_ops=False``);
* the per-image PIL reference ``dc_pipeline.core.ml.augmix.reference.augmix``, in the
  style of the reference code (google-research/augmix ``augmentations.py`` and
  ``cifar.py``'s ``aug``).

The three are interleaved in every repeat, so that drifts in the machine's speed hit
them alike; the table reports medians over the repeats and is written to
``benchmarks/results/augmix_throughput.md``. Other processes on the CPUs are another
matter: they stall the engine's two threads (each parallel op waits for the slower
one) far more than torchvision's single-threaded per-image calls, so the results
record the share of CPU time other processes took during the run and flag runs
above 10 %.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np
import torch
import torchvision
from PIL import Image
from sklearn.datasets import load_digits
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dc_pipeline.augmix import AugMix  # noqa: E402
from dc_pipeline.core.ml.augmix import reference  # noqa: E402

BATCH = 256
RESULTS = Path(__file__).resolve().parent / "results" / "augmix_throughput.md"


# --------------------------------------------------------------------------- data and timing


def make_images(channels: int) -> np.ndarray:
    """``[B, H, W, C]`` uint8: digits upscaled to 28x28 (C = 1) or coloured at 32x32 (C = 3)."""
    digits = load_digits().images
    rng = np.random.default_rng(0)
    size = 28 if channels == 1 else 32
    out = []
    for k in range(BATCH):
        im = Image.fromarray(np.round(digits[k % len(digits)] * 255.0 / 16.0).astype(np.uint8))
        a = np.asarray(im.resize((size, size), Image.BILINEAR), dtype=np.float64)[..., None] / 255.0
        if channels == 1:
            out.append(np.round(a * 255.0).astype(np.uint8))
        else:
            fg, bg = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
            rgb = a * fg + (1 - a) * bg + rng.normal(0.0, 0.03, (size, size, 3))
            out.append(np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8))
    return np.stack(out)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(channels: int, repeats: int, engine_calls: int) -> dict[str, float]:
    arr = make_images(channels)  # [B, H, W, C] uint8
    x_float = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(255.0).contiguous()
    x_uint8 = [torch.from_numpy(a).permute(2, 0, 1).contiguous() for a in arr]
    pil_images = [Image.fromarray(a[..., 0] if channels == 1 else a) for a in arr]

    engine = AugMix(severity=3, width=3, depth=-1, alpha=1.0, all_ops=False)
    eager = AugMix(severity=3, width=3, depth=-1, alpha=1.0, all_ops=False, backend="torch")
    generator = torch.Generator().manual_seed(0)
    tv = v2.AugMix(severity=3, mixture_width=3, chain_depth=-1, alpha=1.0, all_ops=False)
    rng = np.random.RandomState(0)

    def run_engine() -> None:
        for _ in range(engine_calls):
            engine(x_float, generator=generator)

    def run_eager() -> None:
        for _ in range(engine_calls):
            eager(x_float, generator=generator)

    def run_tv() -> None:
        for img in x_uint8:
            tv(img)

    def run_pil() -> None:
        for img in pil_images:
            reference.augmix(img, rng)

    for _ in range(2):  # warm-up (the first call compiles the fused loop, or loads it from Numba's cache)
        run_engine()
        run_eager()
    run_tv()
    run_pil()
    rates: dict[str, list[float]] = {"engine": [], "eager": [], "torchvision": [], "pil": []}
    for _ in range(repeats):
        rates["engine"].append(BATCH * engine_calls / timed(run_engine))
        rates["eager"].append(BATCH * engine_calls / timed(run_eager))
        rates["torchvision"].append(BATCH / timed(run_tv))
        rates["pil"].append(BATCH / timed(run_pil))
    return {name: statistics.median(values) for name, values in rates.items()}


def cpu_seconds() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of all cores since boot, from /proc/stat (steal counts as busy)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - fields[3] - fields[4]) / hz, sum(fields) / hz  # minus idle and iowait


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--engine-calls", type=int, default=5, help="engine calls per repeat (batch each)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (the table's runs use 2)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    cpu_before, own_before = cpu_seconds(), time.process_time()
    rows, verdicts = [], []
    for channels, label in ((1, "28x28x1"), (3, "32x32x3")):
        r = measure(channels, args.repeats, args.engine_calls)
        ratio = r["engine"] / r["torchvision"]
        verdicts.append(f"{label}: {ratio:.1f}x ({'met' if ratio >= 25 else 'missed'})")
        rows.append(
            f"| {label} | {r['engine']:,.0f} | {r['eager']:,.0f} | {r['torchvision']:,.0f} | {r['pil']:,.0f} | "
            f"{r['engine'] / r['torchvision']:.1f}x | {r['eager'] / r['torchvision']:.1f}x | "
            f"{r['engine'] / r['pil']:.1f}x |"
        )
    load_after = os.getloadavg()
    cpu_after, own_after = cpu_seconds(), time.process_time()
    others = None  # share of the machine's CPU time that other processes took during the run
    if cpu_before is not None and cpu_after is not None:
        busy, total = (after - before for after, before in zip(cpu_after, cpu_before))
        others = max(0.0, busy - (own_after - own_before)) / total
    table = "\n".join(
        [
            "| shape | engine (fused) img/s | engine (torch) img/s | torchvision per-image img/s "
            "| PIL reference img/s | fused/torchvision | torch/torchvision | fused/PIL |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
        ]
    )
    print(table)
    if others is not None:
        print(f"other processes took {others:.0%} of the CPU time during the run")
    if args.no_write:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    header = [
        "# AugMix throughput",
        "",
        f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- torch {torch.__version__}, torchvision {torchvision.__version__}, numba {numba.__version__}, "
        f"Python {platform.python_version()}",
        f"- CPU: {cpu_model()}, os.cpu_count() = {os.cpu_count()}, torch.set_num_threads({args.threads})",
        f"- load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f}; "
        f"other processes took {'n/a' if others is None else f'{others:.0%}'} of the CPU time during the run",
        f"- batch {BATCH}; median of {args.repeats} interleaved repeats "
        f"(engine: {args.engine_calls} batch calls per repeat); paper settings "
        "(severity 3, width 3, depth -1, alpha 1, the 9 ops)",
        "- engine: `dc_pipeline.augmix.AugMix` on float [B, C, H, W], default backend (`fused`, compiled "
        "per-image loop) and `backend='torch'` (eager PyTorch); torchvision: "
        "`transforms.v2.AugMix(all_ops=False)` per uint8 image; PIL: per-image "
        "`dc_pipeline.core.ml.augmix.reference.augmix` (the reference ops and `aug()`)",
        f"- target engine >= 25x torchvision per image: {'; '.join(verdicts)}",
        "",
    ]
    shared = others > 0.1 if others is not None else max(load_before[0], load_after[0]) > 1.0
    if shared:
        header.insert(-1, "- WARNING: other processes were using the CPUs; two-thread timings suffer badly from that")
    RESULTS.write_text("\n".join(header) + "\n" + table + "\n")


if __name__ == "__main__":
    main()
