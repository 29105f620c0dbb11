"""The A/B report's and the gate's bootstrap: drawing cell counts against resampling rows.

Run from the repository root: ``python benchmarks/ab_bootstrap.py``. For n labelled predictions of two
models scored on the same requests (shadow mode), it times the paired bootstrap of error, automation rate
and error among auto-accepted answers (2,000 resamples) two ways in one run: resampling rows (index arrays
of ``resamples x n``, in chunks of 4 million values so memory stays bounded) and drawing the resamples'
cell counts from a multinomial (``core/serving/ab_report.resampled_figures``), and checks that the two give
the same intervals. Writes ``benchmarks/results/ab_bootstrap.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dc_pipeline.core.serving.ab_report import resampled_figures  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "ab_bootstrap.md"
RESAMPLES = 2000


def by_rows(pairs, resamples: int, seed: int) -> list[dict[str, np.ndarray]]:
    """The textbook paired bootstrap: the same drawn rows for both models, in bounded chunks."""
    n = len(pairs[0][0])
    rng, chunk = np.random.default_rng(seed), max(1, 4_000_000 // n)
    parts = [{"error": [], "automation_rate": [], "accepted_error": []} for _ in pairs]
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        for part, (wrong, accepted) in zip(parts, pairs):
            w, a = wrong[idx], accepted[idx]
            part["error"].append(w.mean(axis=1))
            part["automation_rate"].append(a.mean(axis=1))
            part["accepted_error"].append((w & a).sum(axis=1) / a.sum(axis=1))
    return [{k: np.concatenate(v) for k, v in part.items()} for part in parts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        rng = np.random.default_rng(n)
        wrong = rng.random(n) < 0.05
        accepted = rng.random(n) < np.where(wrong, 0.3, 0.85)
        other = (wrong | (rng.random(n) < 0.02), accepted & (rng.random(n) < 0.95))
        pairs = [(wrong, accepted), other]
        timings, intervals = {}, {}
        for name, method in (("rows", by_rows), ("cell counts", resampled_figures)):
            started = time.perf_counter()
            draws = method(pairs, RESAMPLES, 0)
            timings[name] = time.perf_counter() - started
            difference = draws[0]["error"] - draws[1]["error"]
            intervals[name] = np.quantile(difference, [0.025, 0.975])
        gap = float(np.abs(intervals["rows"] - intervals["cell counts"]).max())
        rows.append(
            f"| {n:,} | {timings['rows'] * 1000:,.1f} | {timings['cell counts'] * 1000:,.2f} | "
            f"{timings['rows'] / timings['cell counts']:,.0f}x | "
            f"[{intervals['rows'][0]:+.4f}, {intervals['rows'][1]:+.4f}] | "
            f"[{intervals['cell counts'][0]:+.4f}, {intervals['cell counts'][1]:+.4f}] | {gap:.4f} |"
        )
        print(rows[-1], flush=True)
    table = "\n".join(
        [
            "| labelled predictions per model | rows (ms) | cell counts (ms) | speed-up | error difference, rows "
            "| error difference, cell counts | largest gap |",
            "|---:|---:|---:|---:|---|---|---:|",
            *rows,
        ]
    )
    print(table)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        header = (
            f"# A/B bootstrap: cell counts against rows\n\n- date: {stamp}; os.cpu_count() = {os.cpu_count()}; "
            f"{RESAMPLES} paired resamples of two models on the same requests; 95% intervals of the error "
            "difference\n\n"
        )
        RESULTS.write_text(header + table + "\n")


if __name__ == "__main__":
    main()
