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


def line_chart(series: dict, path, *, title: str = "", xlabel: str = "", ylabel: str = "",
               log_y: bool = False, size=(520, 360)) -> Path:  # fmt: skip
    """A line chart as PNG: ``series[name] = (xs, ys)``, one coloured line with markers each.

    The x axis is categorical (the union of the xs, in order, evenly spaced: e.g. K = 4, 8, ...);
    `log_y` plots log10 of the y values (which must then be positive; others are skipped).
    """
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
               (140, 86, 75), (227, 119, 194), (127, 127, 127)]  # fmt: skip
    xs = sorted({x for xs_, _ in series.values() for x in xs_})
    tf = (lambda v: np.log10(v)) if log_y else (lambda v: v)  # noqa: E731
    ys = [
        tf(y) for _, ys_ in series.values() for y in ys_ if np.isfinite(y) and (y > 0 or not log_y)
    ]
    if not xs or not ys:
        raise ValueError("line_chart: no finite points to draw")
    lo, hi = min(ys), max(ys)
    lo, hi = (
        (lo - 0.5, hi + 0.5) if hi - lo < 1e-9 else (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    )
    w, h = size
    left, right, top, bottom = 70, 150, 30, 45
    canvas = Image.new("RGB", size, (255, 255, 255))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()

    def px(i, y):
        x = left + (i + 0.5) * (w - left - right) / len(xs)
        return x, top + (hi - y) / (hi - lo) * (h - top - bottom)

    draw.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
    for i, x in enumerate(xs):
        gx, _ = px(i, lo)
        draw.text((gx - 6, h - bottom + 5), str(x), fill=0, font=font)
    for t in np.linspace(lo, hi, 5):
        _, gy = px(0, t)
        label = f"{10**t:.3g}" if log_y else f"{t:.3g}"
        draw.line([left - 4, gy, left, gy], fill=(0, 0, 0))
        draw.text((5, gy - 6), label, fill=0, font=font)
    for n, (name, (sx, sy)) in enumerate(series.items()):
        c = colours[n % len(colours)]
        pts = [px(xs.index(x), tf(y)) for x, y in zip(sx, sy, strict=True)
               if np.isfinite(y) and (y > 0 or not log_y)]  # fmt: skip
        if len(pts) > 1:
            draw.line(pts, fill=c, width=2)
        for x, y in pts:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=c)
        draw.text((w - right + 8, top + 14 * n), f"- {name}", fill=c, font=font)
    draw.text((left, 8), title, fill=0, font=font)
    draw.text(((left + w - right) / 2 - 10, h - 18), xlabel, fill=0, font=font)
    draw.text((5, top - 22), ylabel, fill=0, font=font)
    path = Path(path)
    canvas.save(path)
    return path
