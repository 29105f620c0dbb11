"""Previews for materialization metadata: image grids with titles, plots (drift histograms) and markdown images."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    """``png`` inlined as a markdown image; ``alt`` says what it shows (screen readers, broken images)."""
    text = " ".join(str(alt).replace("[", "(").replace("]", ")").split())
    if not text:
        raise ValueError("a markdown image needs alt text saying what it shows")
    return f"![{text}](data:image/png;base64,{base64.b64encode(png).decode()})"


def captioned_image(png: bytes, caption: str, alt: str | None = None) -> str:
    """A markdown image under an italic caption (the caption is also its alt text unless ``alt`` is given)."""
    return f"*{caption}*\n\n" + markdown_image(png, alt or caption)


def image_grid_png(
    cells: list[list[np.ndarray | None]],
    col_titles: list[str] | None = None,
    row_titles: list[str] | None = None,
    cell_titles: list[list[str]] | None = None,
    cell_inches: float = 1.0,
    fontsize: int = 8,
) -> bytes:
    """A grid of grayscale images in [0, 1] (``cells``: rows of ``[H, W]`` arrays, None for an empty cell) with
    column headers over the first row, row titles on the left and a title over each cell, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(cells), max((len(r) for r in cells), default=0)
    if not n_rows or not n_cols:
        raise ValueError("an image grid needs at least one image")
    lines = max((t.count("\n") + 1 for row in cell_titles or [] for t in row if t), default=0)
    height = cell_inches + 0.16 * lines
    fig, axes = plt.subplots(
        n_rows,
        n_cols,
        figsize=(cell_inches * n_cols + (1.0 if row_titles else 0.0), height * n_rows + (0.3 if col_titles else 0.0)),
        squeeze=False,
        layout="constrained",
    )
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.02, hspace=0.02)
    for i, row in enumerate(axes):
        for j, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            img = cells[i][j] if j < len(cells[i]) else None
            if img is None:
                ax.axis("off")
                continue
            ax.imshow(np.clip(np.asarray(img, np.float32), 0, 1), cmap="gray", vmin=0.0, vmax=1.0)
            for spine in ax.spines.values():
                spine.set_visible(False)
            title = cell_titles[i][j] if cell_titles and j < len(cell_titles[i]) else ""
            if i == 0 and col_titles and j < len(col_titles):
                title = f"{col_titles[j]}\n{title}" if title else col_titles[j]
                ax.set_title(title, fontsize=fontsize, fontweight="bold" if not cell_titles else "normal")
            elif title:
                ax.set_title(title, fontsize=fontsize)
        if row_titles and i < len(row_titles):
            row[0].set_ylabel(row_titles[i], rotation=0, ha="right", va="center", fontsize=fontsize)
    return figure_png(fig)


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
        both = np.concatenate([r, c])
        lo, hi = (float(both.min()), float(both.max())) if len(both) else (0.0, 1.0)
        margin = 0.02 * (hi - lo) if hi > lo else 0.5
        bins = np.linspace(lo - margin, hi + margin, 31)
        ax.hist(r, bins=bins, density=True, alpha=0.5, label="reference")
        ax.hist(c, bins=bins, density=True, alpha=0.5, label="batch")
        ax.set_title(
            f"{col}\nW/std {table.loc[col, 'wasserstein_std']:.2f}, PSI {table.loc[col, 'psi']:.2f}", fontsize=9
        )
    axes[0][0].legend(fontsize=8)
    axes[0][0].set_ylabel("density")
    out["features"] = figure_png(fig)
    if ref_conf is not None and cur_conf is not None:
        fig, ax = plt.subplots(figsize=(4.5, 2.8))
        bins = np.linspace(0, 1, 26)
        ax.hist(finite(ref_conf), bins=bins, density=True, alpha=0.5, label="test split")
        ax.hist(finite(cur_conf), bins=bins, density=True, alpha=0.5, label="batch")
        ax.set_xlabel("top-class confidence")
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
        out["confidence"] = figure_png(fig)
    return out
