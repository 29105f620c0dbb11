"""Active learning on the demo digits: test error against labels bought, active selection next to random.

Run from the repository root: ``.venv/bin/python benchmarks/active_learning.py`` (``--seeds 0 1`` and
``--max-labels 150`` for a smoke run). The table is printed and written to ``benchmarks/results/active_learning.md``.

Setup. scikit-learn's digits as the demo uses them: ``split_indices(7, n)`` gives the initial three quarters
and the holdout quarter; the holdout quarter is the fixed test set. Images go through the pipeline's
canonical input (PNG bytes -> ``canonical_array`` at the features' default ``image_size`` of 28: grayscale
float32 in [0, 1]). Per seed, ``--initial`` random images of the initial three quarters are the labelled
start (standing for the initial labelled batches); the rest of the three quarters is the unlabelled pool
(its labels are only read when an image is bought).

Each round trains the pipeline's ``SmallCNN`` from scratch with ``training.train`` (mode "baseline", width 16,
depth 2, a fixed number of SGD steps whatever the label count, 2 threads, the seed as training seed), measures
its test error, then buys ``--step`` more labels:

- active: the round's model is the champion; it scores the pool (``predict_proba``, ``embed``) and
  ``select_for_labelling`` picks (margin uncertainty, greedy k-center diversity among the 5x most uncertain,
  slice share 0: no slice analysis runs inside the loop, there is no labelled validation split to run it on);
- random: a uniform draw from the pool.

Both strategies share the labelled start and its model. The number of training steps was chosen once on a
validation split carved from the initial three quarters (not on the test set) so that the largest label count
converges; nothing was tuned on test error. Reported: mean test error per label count with 95 % t-intervals
over seeds, the paired difference active - random, the number of labels active needs to reach random's final
mean error, and whether it is at most half of random's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results" / "active_learning.md"
DEMO_SEED = 7  # the demo's split seed (initial three quarters / holdout quarter)
IMAGE_SIZE = 28  # the features' default image_size (dc_pipeline/defs/features/assets.py)
STEPS = 300  # SGD steps per training, whatever the label count
BATCH = 32
THREADS = 2


def t_interval(values):
    """Mean and 95 % t-interval half-width over seeds."""
    import numpy as np
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), math.nan
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean()), float(half)


def labels_to_reach(counts, errors, target):
    """The first label count whose error is at most ``target`` (None if never)."""
    for c, e in zip(counts, errors):
        if e <= target + 1e-12:
            return int(c)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5, 6, 7])
    parser.add_argument("--initial", type=int, default=50, help="labelled images at the start")
    parser.add_argument("--step", type=int, default=50, help="labels bought per round")
    parser.add_argument("--max-labels", type=int, default=400)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    import torch

    from dc_pipeline.core.curation.active_learning import select_for_labelling
    from dc_pipeline.core.data.features import canonical_array
    from dc_pipeline.core.ml.training import TrainConfig, embed, predict_proba, train
    from dc_pipeline.demo.landing import load_digits_uint8, png_bytes, split_indices

    torch.set_num_threads(THREADS)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    pixels, labels = load_digits_uint8()
    pngs = [png_bytes(p) for p in pixels]
    x = canonical_array(pngs, IMAGE_SIZE)
    sha = np.array([hashlib.sha256(b).hexdigest() for b in pngs], dtype=object)
    initial, test = split_indices(DEMO_SEED, len(labels))
    counts = list(range(args.initial, args.max_labels + 1, args.step))

    def fit(idx, seed):
        n = len(idx)
        epochs = max(1, math.ceil(STEPS / math.ceil(n / BATCH)))
        cfg = TrainConfig(epochs=epochs, batch_size=BATCH, width=16, depth=2, seed=seed, threads=THREADS)
        t0 = time.perf_counter()
        model = train(x[idx], labels[idx], None, None, cfg, mode="baseline").model()
        return model, time.perf_counter() - t0

    def test_error(model):
        return float(np.mean(predict_proba(model, x[test]).argmax(axis=1) != labels[test]))

    rows = []
    train_seconds = []
    select_seconds = []
    for seed in args.seeds:
        rng = np.random.default_rng([seed, 1])
        start = rng.choice(initial, size=args.initial, replace=False)
        model0, secs = fit(start, seed)
        train_seconds.append(secs)
        err0 = test_error(model0)
        for strategy in ("active", "random"):
            labelled = list(start)
            model, err = model0, err0
            draw = np.random.default_rng([seed, 2])
            rows.append({"seed": seed, "strategy": strategy, "labels": len(labelled), "error": err})
            while len(labelled) + args.step <= args.max_labels:
                pool = np.setdiff1d(initial, labelled)
                if strategy == "active":
                    t0 = time.perf_counter()
                    probs, emb = predict_proba(model, x[pool]), embed(model, x[pool])
                    picks = select_for_labelling(
                        pd.DataFrame({"sha256": sha[pool]}), probs, emb, args.step, slice_share=0.0, seed=seed
                    )
                    position = {s: i for i, s in enumerate(sha[pool])}
                    bought = pool[[position[s] for s in picks["sha256"]]]
                    select_seconds.append(time.perf_counter() - t0)
                else:
                    bought = draw.choice(pool, size=args.step, replace=False)
                labelled += list(bought)
                model, secs = fit(np.array(labelled), seed)
                train_seconds.append(secs)
                err = test_error(model)
                rows.append({"seed": seed, "strategy": strategy, "labels": len(labelled), "error": err})
                print(f"seed {seed} {strategy:6s} {len(labelled):4d} labels: test error {err:.4f}", flush=True)

    df = pd.DataFrame(rows)
    wide = df.pivot_table(index=["seed", "labels"], columns="strategy", values="error").reset_index()
    table = []
    for c in counts:
        w = wide[wide["labels"] == c]
        a, ah = t_interval(w["active"])
        r, rh = t_interval(w["random"])
        d, dh = t_interval(w["active"] - w["random"])
        table.append({"labels": c, "active": a, "active_h": ah, "random": r, "random_h": rh, "diff": d, "diff_h": dh})
    summary = pd.DataFrame(table)
    final = counts[-1]
    random_final = float(summary.loc[summary["labels"] == final, "random"].iloc[0])
    active_needs = labels_to_reach(summary["labels"], summary["active"], random_final)
    random_needs = labels_to_reach(summary["labels"], summary["random"], random_final)
    per_seed = []
    for seed in args.seeds:
        w = wide[wide["seed"] == seed].sort_values("labels")
        target = float(w.loc[w["labels"] == final, "random"].iloc[0])
        per_seed.append(labels_to_reach(w["labels"], w["active"], target))
    met = active_needs is not None and active_needs <= final / 2
    minutes = (time.perf_counter() - started) / 60

    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True)
        rev += "-dirty" if dirty.stdout.strip() else ""
    except (OSError, subprocess.CalledProcessError):
        rev = "unknown"

    def cell(mean, half):
        return f"{mean:.4f} ± {half:.4f}" if math.isfinite(half) else f"{mean:.4f}"

    cmd = "benchmarks/active_learning.py " + " ".join(
        [f"--seeds {' '.join(map(str, args.seeds))}", f"--initial {args.initial}", f"--step {args.step}"]
        + [f"--max-labels {args.max_labels}"]
    )
    lines = [
        "# Active learning: test error against labels bought (digits demo)",
        "",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}; code {rev}",
        f"- Python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}; CPU: "
        f"{platform.machine()}, os.cpu_count() = {os.cpu_count()}, {THREADS} torch threads; load average (1 min) "
        f"before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f}; whole benchmark {minutes:.1f} min",
        f"- command: `.venv/bin/python {cmd}`",
        f"- data: scikit-learn digits, demo split `split_indices({DEMO_SEED}, {len(labels)})`: test = the holdout "
        f"quarter ({len(test)} images); per seed {args.initial} random images of the initial three quarters are "
        f"labelled at the start, the other {len(initial) - args.initial} are the unlabelled pool; "
        f"{args.step} labels bought per round up to {args.max_labels}; canonical input {IMAGE_SIZE}x{IMAGE_SIZE}",
        f"- model: SmallCNN width 16 depth 2, `train(mode='baseline')` from scratch every round, {STEPS} SGD steps "
        f"of batch {BATCH} whatever the label count (epochs = ceil({STEPS} / ceil(n / {BATCH}))), lr 0.05 cosine; "
        f"median training {np.median(train_seconds):.1f} s, median selection (score pool + select) "
        f"{np.median(select_seconds) if select_seconds else math.nan:.2f} s",
        "- active: `select_for_labelling` on the round model's probabilities and embeddings of the pool, margin "
        "uncertainty, greedy k-center among the 5x most uncertain, slice share 0 (no slice analysis in the loop); "
        "random: uniform draw from the pool; both share the start set and its model",
        f"- seeds: {', '.join(map(str, args.seeds))} ({len(args.seeds)}); ± = 95 % t-interval over seeds (half-width); "
        "difference = paired active - random per seed",
        "",
        "| labels | active error | random error | active - random |",
        "|---:|---:|---:|---:|",
    ]
    for r in summary.itertuples(index=False):
        lines.append(
            f"| {r.labels} | {cell(r.active, r.active_h)} | {cell(r.random, r.random_h)} | {cell(r.diff, r.diff_h)} |"
        )
    lines += [
        "",
        f"- random selection's final mean error ({final} labels): {random_final:.4f}; random needs {random_needs} "
        f"labels to reach it (by definition), active needs "
        f"{active_needs if active_needs is not None else f'more than {final}'} labels (first label count whose "
        "mean error is at most that)",
        "- per seed (active's first label count at or below that seed's random error at "
        f"{final}): {', '.join(str(v) if v is not None else f'>{final}' for v in per_seed)}",
        f"- target: active reaches random's final error with at most half the labels ({final // 2}): "
        f"{'met' if met else 'not met'}",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
