"""Image grids and PNG files (Pillow), used by the command line, the comparison and training previews."""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ["image_grid", "labelled_grid", "text_size", "write_png", "LABEL_FONT_SIZE"]

#: font size (pixels, before ``scale``) of the labels of :func:`labelled_grid`
LABEL_FONT_SIZE = 11


def image_grid(images, columns: Optional[int] = None, scale: int = 1, pad: int = 1) -> np.ndarray:
    """Tile NHWC images in ``[-1, 1]`` into one uint8 grid with ``pad`` pixels of padding, upscaled by ``scale``."""
    images = np.clip((np.asarray(images, np.float32) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    count, height, width, channels = images.shape
    columns = columns or int(math.ceil(math.sqrt(count)))
    rows = int(math.ceil(count / columns))
    grid = np.zeros((rows * (height + pad) + pad, columns * (width + pad) + pad, channels), np.uint8)
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = pad + row * (height + pad), pad + column * (width + pad)
        grid[top:top + height, left:left + width] = images[index]
    return grid.repeat(scale, 0).repeat(scale, 1)


def _pil_image(image: np.ndarray):
    from PIL import Image

    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image of dtype {image.dtype} is not allowed: need uint8")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
        raise ValueError(f"image of shape {image.shape} is not allowed: need (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    return Image.fromarray(image)


def write_png(path: str, image: np.ndarray) -> None:
    """Write a uint8 ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` image to ``path`` as PNG, atomically."""
    from scire_jax.io.files import atomic_write

    picture = _pil_image(image)
    atomic_write(path, lambda temporary: picture.save(temporary, format="PNG", optimize=True))


@functools.lru_cache(maxsize=8)
def _font(size: int):
    """Pillow's built-in font: scalable (FreeType) at ``size`` pixels where available, else its bitmap font."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1, or built without FreeType
        return ImageFont.load_default()


def _line_height(font) -> int:
    if hasattr(font, "getmetrics"):
        ascent, descent = font.getmetrics()
        return int(ascent + descent)
    return int(font.getbbox("Ag|")[3])


def text_size(text: str, scale: int = 1) -> Tuple[int, int]:
    """``(width, height)`` in pixels of a label of :func:`labelled_grid` at ``scale``.

    The height is the font's line height, the same for every text, so that labels of a row of
    columns line up.
    """
    font = _font(LABEL_FONT_SIZE * int(scale))
    left, _, right, _ = font.getbbox(text) if text else (0, 0, 0, 0)
    return int(max(right, left, 0)), _line_height(font)


def _label(text: str, scale: int) -> np.ndarray:
    """uint8 ``(line height, text width)`` rendering of ``text``: white (255) on black."""
    from PIL import Image, ImageDraw

    width, height = text_size(text, scale)
    canvas = Image.new("L", (max(width, 1), height), 0)
    ImageDraw.Draw(canvas).text((0, 0), text, fill=255, font=_font(LABEL_FONT_SIZE * scale))
    return np.asarray(canvas, np.uint8)[:, :width]


def _stamp(image: np.ndarray, mask: np.ndarray, y: int, x: int) -> None:
    region = image[y:y + mask.shape[0], x:x + mask.shape[1]]
    np.maximum(region, mask[:region.shape[0], :region.shape[1], None], out=region)


def labelled_grid(cells: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str], column_labels: Sequence[str],
                  scale: int = 1, gap: int = 3) -> np.ndarray:
    """Arrange uint8 image tiles ``cells[row][column]`` into one labelled uint8 image.

    Rows are labelled on the left, columns on top, in white on black (Pillow's built-in font).  A
    row is as high as its highest tile (at least a line of text), a column as wide as its widest
    tile or its label; smaller tiles are centred in their slot.

    Args:
      cells: nested list ``[row][column]`` of uint8 ``(H, W, C)`` arrays (``C`` equal for all).
      row_labels, column_labels: strings, one per row / column.
      scale: integer upscaling of the tiles (nearest neighbour), the gaps and the font size.
      gap: pixels between tiles and around the labels, before scaling.

    Returns:
      uint8 ``(H, W, C)`` image of height ``line + 2 g + sum(row height + g)`` and width
      ``max(row label widths) + 2 g + sum(column width + g)``, where ``line = text_size("", scale)[1]``,
      ``g = scale gap`` and tiles count ``scale`` times their size.
    """
    if len(cells) != len(row_labels) or any(len(row) != len(column_labels) for row in cells):
        raise ValueError(f"cells is {len(cells)} rows x {[len(row) for row in cells]} columns; expected "
                         f"{len(row_labels)} rows x {len(column_labels)} columns (one per label)")
    scale = int(scale)
    gap = int(gap) * scale
    cells = [[np.asarray(tile, np.uint8).repeat(scale, 0).repeat(scale, 1) for tile in row] for row in cells]
    channels = cells[0][0].shape[-1]
    line = text_size("", scale)[1]
    heights = [max([line] + [tile.shape[0] for tile in row]) for row in cells]
    widths = [max([text_size(label, scale)[0]] + [cells[r][c].shape[1] for r in range(len(cells))])
              for c, label in enumerate(column_labels)]
    left = max(text_size(label, scale)[0] for label in row_labels) + 2 * gap
    top = line + 2 * gap
    image = np.zeros((top + sum(heights) + gap * len(heights), left + sum(widths) + gap * len(widths), channels),
                     np.uint8)
    x = left
    for column, label in enumerate(column_labels):
        mask = _label(label, scale)
        _stamp(image, mask, gap, x + (widths[column] - mask.shape[1]) // 2)
        x += widths[column] + gap
    y = top
    for row, label in enumerate(row_labels):
        _stamp(image, _label(label, scale), y + max(0, (heights[row] - line) // 2), gap)
        y += heights[row] + gap
    y = top
    for row in range(len(cells)):
        x = left
        for column, tile in enumerate(cells[row]):
            top_left = (y + (heights[row] - tile.shape[0]) // 2, x + (widths[column] - tile.shape[1]) // 2)
            image[top_left[0]:top_left[0] + tile.shape[0], top_left[1]:top_left[1] + tile.shape[1]] = tile
            x += widths[column] + gap
        y += heights[row] + gap
    return image
