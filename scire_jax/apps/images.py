"""Image grids as PNG without extra dependencies (zlib), used by the CLI and training previews."""

from __future__ import annotations

import math
import struct
import zlib
from typing import Optional

import numpy as np

__all__ = ["encode_png", "image_grid", "labelled_grid", "text_mask", "write_png"]


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 ``(H, W)`` (grey) or ``(H, W, 3)`` (RGB) array."""
    image = np.ascontiguousarray(image, np.uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
        raise ValueError(f"image of shape {image.shape} is not allowed: need (H, W), (H, W, 1) or (H, W, 3)")
    height, width = image.shape[:2]
    raw = b"".join(b"\x00" + row.tobytes() for row in image.reshape(height, -1))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0 if image.ndim == 2 else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


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


def write_png(path: str, image: np.ndarray) -> None:
    """Write ``image`` (uint8, see :func:`encode_png`) to ``path`` atomically (temporary file + rename)."""
    from scire_jax.io.files import atomic_write

    data = encode_png(image)

    def write(temporary):
        with open(temporary, "wb") as handle:
            handle.write(data)

    atomic_write(path, write)


# A 3x5 pixel font (upper case, digits, a few signs) so that comparison grids carry their own
# row and column labels without a plotting dependency.
_GLYPHS = {
    "A": ".#. #.# ### #.# #.#", "B": "##. #.# ##. #.# ##.", "C": ".## #.. #.. #.. .##",
    "D": "##. #.# #.# #.# ##.", "E": "### #.. ##. #.. ###", "F": "### #.. ##. #.. #..",
    "G": ".## #.. #.# #.# .##", "H": "#.# #.# ### #.# #.#", "I": "### .#. .#. .#. ###",
    "J": "..# ..# ..# #.# .#.", "K": "#.# #.# ##. #.# #.#", "L": "#.. #.. #.. #.. ###",
    "M": "#.# ### ### #.# #.#", "N": "##. #.# #.# #.# #.#", "O": ".#. #.# #.# #.# .#.",
    "P": "##. #.# ##. #.. #..", "Q": ".#. #.# #.# ##. .##", "R": "##. #.# ##. #.# #.#",
    "S": ".## #.. .#. ..# ##.", "T": "### .#. .#. .#. .#.", "U": "#.# #.# #.# #.# ###",
    "V": "#.# #.# #.# #.# .#.", "W": "#.# #.# ### ### #.#", "X": "#.# #.# .#. #.# #.#",
    "Y": "#.# #.# .#. .#. .#.", "Z": "### ..# .#. #.. ###",
    "0": "### #.# #.# #.# ###", "1": ".#. ##. .#. .#. ###", "2": "##. ..# .#. #.. ###",
    "3": "##. ..# .#. ..# ##.", "4": "#.# #.# ### ..# ..#", "5": "### #.. ##. ..# ##.",
    "6": ".## #.. ### #.# ###", "7": "### ..# .#. .#. .#.", "8": "### #.# ### #.# ###",
    "9": "### #.# ### ..# ##.", "+": "... .#. ### .#. ...", "-": "... ... ### ... ...",
    "=": "... ### ... ### ...", ".": "... ... ... ... .#.", ":": "... .#. ... .#. ...",
    "_": "... ... ... ... ###", "/": "..# ..# .#. #.. #..", "(": ".#. #.. #.. #.. .#.",
    ")": ".#. ..# ..# ..# .#.", " ": "... ... ... ... ...",
}
GLYPH_HEIGHT, GLYPH_WIDTH = 5, 3


def text_mask(text: str) -> np.ndarray:
    """Boolean ``(5, 4 len(text) - 1)`` bitmap of ``text`` in the built-in 3x5 font (case-insensitive).

    Characters outside the font (letters, digits, ``+-=.:_/()`` and space) render as blanks, so
    a label never fails to draw.

    Example:
        >>> for row in text_mask("Hi"):
        ...     print("".join("#" if on else "." for on in row))
        #.#.###
        #.#..#.
        ###..#.
        #.#..#.
        #.#.###
    """
    columns = []
    for index, character in enumerate(text.upper()):
        rows = _GLYPHS.get(character, _GLYPHS[" "]).split()
        glyph = np.array([[pixel == "#" for pixel in row] for row in rows], bool)
        if index:
            columns.append(np.zeros((GLYPH_HEIGHT, 1), bool))
        columns.append(glyph)
    if not columns:
        return np.zeros((GLYPH_HEIGHT, 0), bool)
    return np.concatenate(columns, axis=1)


def labelled_grid(cells, row_labels, column_labels, scale: int = 1, gap: int = 3) -> np.ndarray:
    """Arrange uint8 image tiles ``cells[row][column]`` into one labelled uint8 image.

    Rows are labelled on the left, columns on top, in white on black; tiles of a row must share
    their height and tiles of a column their width (as grids of equally many samples do).

    Args:
      cells: nested list ``[row][column]`` of uint8 ``(H, W, C)`` arrays (``C`` equal for all).
      row_labels, column_labels: strings, one per row / column.
      scale: integer upscaling of the whole picture (labels included).
      gap: pixels between tiles and around the labels, before scaling.

    Returns:
      uint8 ``(H, W, C)`` image.
    """
    if len(cells) != len(row_labels) or any(len(row) != len(column_labels) for row in cells):
        raise ValueError(f"cells is {len(cells)} rows x {[len(row) for row in cells]} columns; expected "
                         f"{len(row_labels)} rows x {len(column_labels)} columns (one per label)")
    channels = cells[0][0].shape[-1]
    heights = [max(tile.shape[0] for tile in row) for row in cells]
    widths = [max(cells[r][c].shape[1] for r in range(len(cells))) for c in range(len(column_labels))]
    row_masks = [text_mask(label) for label in row_labels]
    column_masks = [text_mask(label) for label in column_labels]
    left = max(mask.shape[1] for mask in row_masks) + 2 * gap
    top = GLYPH_HEIGHT + 2 * gap
    image = np.zeros((top + sum(heights) + gap * len(heights), left + sum(widths) + gap * len(widths), channels),
                     np.uint8)

    def stamp(mask, y, x):
        image[y:y + mask.shape[0], x:x + mask.shape[1]][mask] = 255

    x = left
    for column, mask in enumerate(column_masks):
        stamp(mask[:, :widths[column]], gap, x + max(0, (widths[column] - mask.shape[1]) // 2))
        x += widths[column] + gap
    y = top
    for row, mask in enumerate(row_masks):
        stamp(mask, y + max(0, (heights[row] - GLYPH_HEIGHT) // 2), gap)
        x = left
        for column, tile in enumerate(cells[row]):
            image[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
            x += widths[column] + gap
        y += heights[row] + gap
    return image.repeat(scale, 0).repeat(scale, 1)
