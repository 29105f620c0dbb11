"""On a CUDA machine: training on the accelerator queue's device, next to the CPU, in one run.

Trains the baseline and the AugMix model on scikit-learn's digits with ``device="cpu"`` and ``device="auto"``
(CUDA there) and prints what the registry would record (the device), seconds per epoch, validation error and
whether two CUDA runs of the same seed give the same weights (training insists on deterministic algorithms).

    python3 benchmarks/training_cuda_check.py     # not a test: CI has no GPU
"""

import time

import numpy as np
import torch
from sklearn.datasets import load_digits

from dc_pipeline.core.ml.training import TrainConfig, train


def main() -> None:
    assert torch.cuda.is_available(), "needs a CUDA device"
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    y = digits.target
    order = np.random.default_rng(0).permutation(len(y))
    tr, va = order[:1400], order[1400:]
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    print("| mode | device asked | device recorded | s/epoch | val error | weights sha256 (12) |")
    print("|---|---|---|---:|---:|---|")
    shas = {}
    for mode in ("baseline", "augmix"):
        for device, run in (("cpu", 0), ("auto", 0), ("auto", 1)):
            cfg = TrainConfig(epochs=8, width=16, seed=0, device=device, threads=8)
            start = time.perf_counter()
            try:
                result = train(x[tr], y[tr], x[va], y[va], cfg, mode=mode)
            except Exception as exc:  # a device check reports, it does not stop at the first failure
                print(f"| {mode} | {device} | failed: {type(exc).__name__}: {str(exc)[:200]} | | | |")
                continue
            seconds = (time.perf_counter() - start) / cfg.epochs
            shas[(mode, device, run)] = result.weights_sha256
            err = result.history[-1]["val_error"]
            print(
                f"| {mode} | {device} | {result.config.device} | {seconds:.2f} | {err:.3f} | {result.weights_sha256[:12]} |"
            )
        same = shas.get((mode, "auto", 0)) is not None and shas.get((mode, "auto", 0)) == shas.get((mode, "auto", 1))
        print(f"{mode}: two CUDA runs of seed 0 give the same weights: {same}")


if __name__ == "__main__":
    main()
