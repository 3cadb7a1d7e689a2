"""Image grids as PNG files (Pillow; no plotting library needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def image_grid(rows, path: str | Path, *, scale: int = 2, gap: int = 2) -> Path:
    """Write rows of images side by side: ``rows[r][i]`` lands at row r, column i.

    Args:
      rows: sequence of arrays [N, H, W] or [N, H, W, 1] with values in [0, 1] (clipped).
      path: output PNG file.
      scale: integer upscaling per pixel, for readability.
      gap: pixels of white between images.
    """
    rows = [
        np.clip(np.asarray(r, np.float32).reshape(len(r), *np.shape(r)[1:3]), 0, 1) for r in rows
    ]
    n, h, w = rows[0].shape
    if any(r.shape != (n, h, w) for r in rows):
        raise ValueError(f"every row needs the shape {(n, h, w)}, got {[r.shape for r in rows]}")
    canvas = np.ones((len(rows) * (h + gap) + gap, n * (w + gap) + gap), np.float32)
    for r, row in enumerate(rows):
        for i, img in enumerate(row):
            y, x = gap + r * (h + gap), gap + i * (w + gap)
            canvas[y : y + h, x : x + w] = img
    img = Image.fromarray(np.round(canvas * 255).astype(np.uint8), mode="L")
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    img.save(path)
    return path
