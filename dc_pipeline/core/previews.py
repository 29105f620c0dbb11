"""Small PNG previews for materialization metadata: image grids and plots as markdown images."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def grid_png(rows: list[list[np.ndarray]], scale: int = 3, pad: int = 2) -> bytes:
    """A grid of grayscale images in [0, 1] (each row a list of ``[H, W]`` arrays) as PNG bytes."""
    h, w = rows[0][0].shape
    n_cols = max(len(r) for r in rows)
    canvas = np.ones((len(rows) * (h + pad) + pad, n_cols * (w + pad) + pad), np.float32)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y:y + h, x:x + w] = np.clip(img, 0, 1)
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
