"""Decoding encoded images (files or bytes) to uint8 arrays in parallel, never crashing on one.

    images, errors = decode_images(paths, image_size=32, channels=3)
    # images[i] is (32, 32, 3) uint8, or None where errors[i] says why it could not be read.

Pillow releases the GIL while it decompresses, so a thread pool scales with the cores and
overlaps file reads; it avoids the pickling cost a process pool would pay per small image.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
from collections.abc import Sequence

import numpy as np
import PIL.Image

__all__ = ["decode_image", "decode_images", "stack_images"]

_CHUNK = 256


def decode_image(source: str | bytes, *, image_size: int | None, channels: int) -> np.ndarray:
    """Decodes one image file or encoded byte string to uint8.

    Every mode is converted the same way: palette and grey+alpha images go through RGBA, alpha
    is dropped (the stored colour is kept), grey is repeated to RGB when `channels` is 3, and
    16-bit grey is scaled to 8 bits. Resizing uses Pillow's antialiased bilinear filter.

    Args:
      source: a file path, or the encoded bytes (PNG, JPEG, ...).
      image_size: side of the square output, or None to keep the stored size.
      channels: 3 (RGB) or 1 (grey).

    Returns:
      (H, W, channels) uint8 array.
    """
    fobj = io.BytesIO(source) if isinstance(source, bytes) else source
    with PIL.Image.open(fobj) as img:
        img.load()  # Decode fully now, so a truncated file fails here and not later.
        if img.mode.startswith("I;16") or img.mode == "I":
            arr = np.asarray(img, dtype=np.float64)
            top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
            img = PIL.Image.fromarray(np.round(arr * (255.0 / top)).astype(np.uint8), "L")
        elif img.mode in ("P", "PA", "LA", "La"):
            img = img.convert("RGBA")
        img = img.convert("RGB" if channels == 3 else "L")
        if image_size is not None and img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), PIL.Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    return arr.reshape(*arr.shape[:2], channels)


def _decode_chunk(sources, image_size, channels):
    out = []
    for source in sources:
        try:
            out.append((decode_image(source, image_size=image_size, channels=channels), None))
        except Exception as e:  # any failure means "this file is unreadable".
            out.append((None, f"{type(e).__name__}: {e}"))
    return out


def decode_images(
    sources: Sequence[str | bytes],
    *,
    image_size: int | None,
    channels: int,
    num_workers: int | None = None,
) -> tuple[list[np.ndarray | None], list[str | None]]:
    """Decodes many images with a thread pool; failures are returned, not raised.

    Args:
      sources: file paths or encoded byte strings.
      image_size: side of the square outputs, or None to keep each stored size.
      channels: 3 or 1.
      num_workers: threads; default os.cpu_count().

    Returns:
      (images, errors): two lists as long as `sources`; images[i] is an (H, W, channels) uint8
      array and errors[i] None, or images[i] is None and errors[i] a one-line reason.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}.")
    chunks = [sources[i : i + _CHUNK] for i in range(0, len(sources), _CHUNK)]
    workers = max(1, min(num_workers or os.cpu_count() or 1, len(chunks)))
    if workers == 1:
        results = [_decode_chunk(c, image_size, channels) for c in chunks]
    else:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            results = list(
                pool.map(
                    _decode_chunk, chunks, [image_size] * len(chunks), [channels] * len(chunks)
                )
            )
    flat = [r for chunk in results for r in chunk]
    return [r[0] for r in flat], [r[1] for r in flat]


def stack_images(images: Sequence[np.ndarray], names: Sequence[str], *, what: str) -> np.ndarray:
    """Stacks same-sized images into (N, H, W, C), or explains which sizes differ.

    Args:
      images: (H, W, C) uint8 arrays.
      names: a name per image, used in the error message.
      what: what the images are, for the error message (e.g. "folder /data/x").

    Returns:
      (N, H, W, C) uint8 array.
    """
    sizes = {}
    for img, name in zip(images, names, strict=True):
        sizes.setdefault(img.shape, name)
    if len(sizes) > 1:
        shown = ", ".join(f"{h}x{w}x{c} (e.g. {n})" for (h, w, c), n in list(sizes.items())[:4])
        raise ValueError(
            f"{what} has images of {len(sizes)} different sizes ({shown}); pass image_size "
            "(--image_size) to resize them all to one square size."
        )
    if not images:
        raise ValueError(f"{what} has no readable images.")
    return np.stack(images)
