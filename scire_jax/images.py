"""Image grids as PNG without extra dependencies (zlib), used by the CLI and training previews."""

from __future__ import annotations

import math
import struct
import zlib
from typing import Optional

import numpy as np

__all__ = ["encode_png", "image_grid", "write_png"]


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
    """Write ``image`` (uint8, see :func:`encode_png`) to ``path``."""
    data = encode_png(image)
    with open(path, "wb") as handle:
        handle.write(data)
