"""Cost of one drift report: ``drift_report`` for a 1,000-image batch against growing references.

Run from the repository root: ``python benchmarks/drift_cost.py``. Model loading and embedding are
excluded: per-image statistics come from sklearn's digits (upsampled to 28x28, ``image_statistics``)
resampled with replacement to each size, embeddings are a fixed random projection + ReLU of the same
images (64-dim) with a little noise, and the predicted probabilities are a softmax over 10 classes.
Reference sizes 1,000 to 20,000, batch 1,000, median of 3 runs each, numpy/BLAS limited to 2 threads
(``threadpoolctl``). ``drift_report`` runs with its defaults (MMD on at most 1,000 reference and 500
batch points, 1,000 permutations). The table is printed and written with the date, CPU count and load
average to ``benchmarks/results/drift_cost.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy
from scipy import ndimage
from sklearn.datasets import load_digits
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dc_pipeline.core.data.features import image_statistics  # noqa: E402
from dc_pipeline.core.monitoring import drift  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "drift_cost.md"
REF_SIZES = (1_000, 2_500, 5_000, 10_000, 20_000)
BATCH = 1_000
DIM = 64
TARGET_S = 2.0  # for the 10,000-image reference


def digits_pool():
    d = load_digits()
    x = ndimage.zoom(d.images / 16.0, (1, 3.5, 3.5), order=1).clip(0, 1).astype(np.float32)
    proj = np.random.default_rng(123).normal(size=(x.shape[1] * x.shape[2], DIM)) / x.shape[1]
    emb = np.maximum(x.reshape(len(x), -1) @ proj, 0).astype(np.float32)
    head = np.random.default_rng(7).normal(size=(DIM, 10)) * 3.0  # a fixed 'classifier head'
    return image_statistics(x), emb, emb @ head, d.target


def sample(pool, n: int, rng: np.random.Generator):
    stats, emb, logits, labels = pool
    idx = rng.integers(0, len(stats), n)
    e = emb[idx] + rng.normal(0, 0.05, (n, DIM)).astype(np.float32)
    z = logits[idx] + rng.normal(0, 0.5, (n, logits.shape[1]))
    p = np.exp(z - z.max(axis=1, keepdims=True))
    sources = np.array(["field_app", "partner_api", "legacy_erp"])[rng.integers(0, 3, n)]
    return stats.iloc[idx].reset_index(drop=True), e, p / p.sum(axis=1, keepdims=True), labels[idx], sources


def timed(ref, cur, test_probs, test_labels) -> tuple[float, float]:
    """(seconds for drift_report, seconds spent inside its ``mmd_test`` call)."""
    inner = drift.policy.mmd_test  # drift_report calls it from the policy module
    spent = []

    def mmd_timed(*args, **kwargs):
        t = time.perf_counter()
        out = inner(*args, **kwargs)
        spent.append(time.perf_counter() - t)
        return out

    drift.policy.mmd_test = mmd_timed
    try:
        t0 = time.perf_counter()
        drift.drift_report(
            ref[0], cur[0], ref[1], cur[1], test_probs, cur[2], ref[3], cur[3], ref[4], cur[4], test_labels=test_labels
        )
        return time.perf_counter() - t0, sum(spent)
    finally:
        drift.policy.mmd_test = inner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    pool = digits_pool()
    rng = np.random.default_rng(0)
    cur = sample(pool, BATCH, rng)
    test = sample(pool, 500, rng)
    rows = []
    with threadpool_limits(2):
        timed(sample(pool, 1_000, rng), cur, test[2], test[3])  # warm-up (imports, BLAS)
        for n_ref in REF_SIZES:
            ref = sample(pool, n_ref, rng)
            runs = [timed(ref, cur, test[2], test[3]) for _ in range(args.repeats)]
            rows.append((n_ref, statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)))
            print(f"reference {n_ref:>6,}: {rows[-1][1]:.3f} s (MMD {rows[-1][2]:.3f} s)", flush=True)
    load_after = os.getloadavg()[0]

    at_10k = {n: s for n, s, _ in rows}[10_000]
    table = ["| reference size | seconds | of which MMD |", "|---:|---:|---:|"]
    table += [f"| {n:,} | {s:.3f} | {m:.3f} |" for n, s, m in rows]
    text = "\n".join(
        [
            "# Drift report cost",
            "",
            f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
            f"- Python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}",
            f"- CPU: {platform.processor() or platform.machine()}, os.cpu_count() = {os.cpu_count()}, "
            "BLAS/OpenMP limited to 2 threads",
            f"- load average (1 min) before / after: {load_before:.2f} / {load_after:.2f}",
            f"- `drift_report` defaults (MMD subsample 1,000 ref / 500 batch, 1,000 permutations); batch {BATCH:,} "
            f"images; median of {args.repeats} runs; model loading and embedding excluded (digits statistics "
            f"resampled, {DIM}-dim embeddings)",
            "- 'of which MMD': time inside the report's `mmd_test` call (subsampling, kernel, permutations)",
            f"- target under {TARGET_S:.0f} s for 1,000 vs 10,000: {at_10k:.3f} s "
            f"({'met' if at_10k < TARGET_S else 'missed'})",
            "",
            *table,
            "",
        ]
    )
    print("\n" + "\n".join(table))
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
