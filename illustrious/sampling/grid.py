"""A PNG-ready grid of images, each with its prompt written underneath."""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def image_grid(images: np.ndarray, captions: list[str], columns: int = 8, cell: int = 128,
               caption_lines: int = 4) -> Image.Image:
    """images (N, H, W, 3) uint8 -> one image; small images are enlarged without smoothing so pixels stay visible."""
    n = len(images)
    columns = max(1, min(columns, n))
    rows = (n + columns - 1) // columns
    font = ImageFont.load_default()
    line_height = 11
    chars = max(8, cell // 6)
    text_h = caption_lines * line_height + 4
    grid = Image.new("RGB", (columns * cell, rows * (cell + text_h)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        h, w = image.shape[:2]
        scale = cell / max(h, w)
        resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
        tile = Image.fromarray(image).resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)
        x, y = (i % columns) * cell, (i // columns) * (cell + text_h)
        grid.paste(tile, (x + (cell - tile.width) // 2, y + (cell - tile.height) // 2))
        lines = textwrap.wrap(caption or "(empty prompt)", chars)[:caption_lines]
        for j, line in enumerate(lines):
            draw.text((x + 2, y + cell + 2 + j * line_height), line, fill=(0, 0, 0), font=font)
    return grid


def side_by_side(grids: dict[str, Image.Image], gap: int = 8, title_h: int = 16) -> Image.Image:
    """Grids next to each other, each under its title (e.g. {"raw weights": ..., "EMA weights": ...})."""
    width = sum(g.width for g in grids.values()) + gap * (len(grids) - 1)
    height = max(g.height for g in grids.values()) + title_h
    out = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    x = 0
    for title, grid in grids.items():
        draw.text((x + 4, 2), title, fill=(0, 0, 0), font=font)
        out.paste(grid, (x, title_h))
        x += grid.width + gap
    return out
