"""Image grids as PNG files (Pillow; no plotting library needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def image_grid(rows, path, *, scale: int = 2, gap: int = 2, captions=None) -> Path:
    """Write rows of images side by side: ``rows[r][i]`` lands at row r, column i.

    Args:
      rows: sequence of arrays [N, H, W] or [N, H, W, 1], values in [0, 1] (clipped); rows may
        have different lengths.
      path: output PNG file.
      scale: integer upscaling per pixel, for readability.
      gap: pixels of white between images.
      captions: optional ``captions[r][i]`` strings written under each image.
    """
    rows = [np.clip(np.asarray(r, np.float32), 0, 1) for r in rows]
    rows = [r.reshape(r.shape[0], r.shape[1], r.shape[2]) for r in rows]
    h, w = rows[0].shape[1:]
    if any(r.shape[1:] != (h, w) for r in rows):
        raise ValueError(f"every image needs the size {(h, w)}, got {[r.shape for r in rows]}")
    text = 12 if captions else 0  # caption band, in output pixels
    cell_h = h * scale + text
    n = max(len(r) for r in rows)
    width = n * (w + gap) * scale + gap * scale
    canvas = Image.new("L", (width, len(rows) * (cell_h + gap * scale) + gap * scale), 255)
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for r, row in enumerate(rows):
        for i, img in enumerate(row):
            x, y = (gap + i * (w + gap)) * scale, gap * scale + r * (cell_h + gap * scale)
            tile = Image.fromarray(np.round(img * 255).astype(np.uint8), mode="L")
            canvas.paste(tile.resize((w * scale, h * scale), Image.NEAREST), (x, y))
            if captions and captions[r][i]:
                draw.text((x, y + h * scale), str(captions[r][i]), fill=0, font=font)
    path = Path(path)
    canvas.save(path)
    return path
