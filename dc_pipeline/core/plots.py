"""Small PNG previews for materialization metadata: image grids, plots (drift histograms) and markdown images."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
from PIL import Image


def grid_png(rows: list[list[np.ndarray]], scale: int = 3, pad: int = 2) -> bytes:
    """A grid of grayscale images in [0, 1] (each row a list of ``[H, W]`` arrays) as PNG bytes."""
    h, w = rows[0][0].shape
    n_cols = max(len(r) for r in rows)
    canvas = np.ones((len(rows) * (h + pad) + pad, n_cols * (w + pad) + pad), np.float32)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y : y + h, x : x + w] = np.clip(img, 0, 1)
    pil = Image.fromarray(np.rint(canvas * 255).astype(np.uint8))
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def markdown_image(png: bytes, alt: str = "") -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def drift_plots(
    ref_stats: pd.DataFrame,
    cur_stats: pd.DataFrame,
    ref_conf: np.ndarray | None = None,
    cur_conf: np.ndarray | None = None,
    table: pd.DataFrame | None = None,
    n_features: int = 4,
) -> dict[str, bytes]:
    """PNGs: ``features`` (histograms of the ``n_features`` most drifted features by Wasserstein/std, ref vs
    batch) and, given confidences, ``confidence`` (top-class confidence histograms)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dc_pipeline.core.monitoring.drift.statistics import feature_statistics, finite

    if table is None:
        from dc_pipeline.core.data.features import STAT_COLUMNS

        table = feature_statistics(ref_stats, cur_stats, [c for c in STAT_COLUMNS if c in cur_stats.columns])
    top = table["wasserstein_std"].fillna(-1).sort_values(ascending=False).index[:n_features].tolist()
    out: dict[str, bytes] = {}
    fig, axes = plt.subplots(1, max(len(top), 1), figsize=(3.2 * max(len(top), 1), 2.8), squeeze=False)
    for ax, col in zip(axes[0], top):
        r, c = finite(ref_stats[col]), finite(cur_stats[col])
        lo, hi = float(min(r.min(initial=0), c.min(initial=0))), float(max(r.max(initial=1), c.max(initial=1)))
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 31)
        ax.hist(r, bins=bins, density=True, alpha=0.5, label="reference")
        ax.hist(c, bins=bins, density=True, alpha=0.5, label="batch")
        ax.set_title(
            f"{col}\nW/std {table.loc[col, 'wasserstein_std']:.2f}, PSI {table.loc[col, 'psi']:.2f}", fontsize=9
        )
    axes[0][0].legend(fontsize=8)
    out["features"] = figure_png(fig)
    if ref_conf is not None and cur_conf is not None:
        fig, ax = plt.subplots(figsize=(4.5, 2.8))
        bins = np.linspace(0, 1, 26)
        ax.hist(finite(ref_conf), bins=bins, density=True, alpha=0.5, label="test split")
        ax.hist(finite(cur_conf), bins=bins, density=True, alpha=0.5, label="batch")
        ax.set_xlabel("top-class confidence")
        ax.legend(fontsize=8)
        out["confidence"] = figure_png(fig)
    return out
