"""Decoded-array caches: where they live, how they are keyed, and atomic writes.

    key = fingerprint(file_stats(root, paths), image_size=32)
    arrays = load_npz(path)            # None when absent or unreadable
    save_npz(path, arrays)             # temp file + rename: readers never see half a file

A cache is keyed by the list of source files with their sizes and modification times, so any
added, removed, replaced or touched file makes a new key (and the old cache file is removed).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Mapping

import numpy as np
from absl import logging

from bal_jax.atomic import atomic_path

__all__ = [
    "default_cache_dir",
    "file_stats",
    "fingerprint",
    "load_npz",
    "remove_stale",
    "save_npz",
    "writable_dir",
]

# Bump when the cached arrays change meaning (decoding rules, layout), to orphan old caches.
CACHE_FORMAT = 1


def default_cache_dir() -> str:
    """$BAL_JAX_CACHE, else ~/.cache/bal_jax."""
    return os.path.expanduser(os.environ.get("BAL_JAX_CACHE") or "~/.cache/bal_jax")


def file_stats(root: str, relpaths: Iterable[str]) -> list[tuple[str, int, int]]:
    """(relative path, size in bytes, mtime in ns) of each file under root."""
    out = []
    for rel in relpaths:
        st = os.stat(os.path.join(root, rel))
        out.append((rel, st.st_size, st.st_mtime_ns))
    return out


def fingerprint(stats: Iterable[tuple[str, int, int]], **params) -> str:
    """A 16-hex-digit key over file stats and loading parameters (e.g. image_size)."""
    h = hashlib.sha256(f"bal_jax-cache-v{CACHE_FORMAT}\n".encode())
    for key in sorted(params):
        h.update(f"{key}={params[key]!r}\n".encode())
    for rel, size, mtime in sorted(stats):
        h.update(f"{rel}\t{size}\t{mtime}\n".encode())
    return h.hexdigest()[:16]


def writable_dir(path: str) -> bool:
    """Whether `path` exists or can be created, and files can be written in it."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError:
        return False
    return True


def load_npz(path: str) -> dict[str, np.ndarray] | None:
    """The arrays of an .npz cache file, or None if it is missing or unreadable."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception as e:  # a damaged cache is rebuilt, not fatal.
        logging.warning("Ignoring unreadable cache file %s (%s); rebuilding it.", path, e)
        return None


def save_npz(path: str, arrays: Mapping[str, np.ndarray]) -> bool:
    """Writes arrays to `path` atomically (uncompressed: loads at disk speed).

    Returns:
      True on success; False (with a warning) if the directory is not writable or full, since a
      missing cache only costs time.
    """
    try:
        with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
    except OSError as e:
        logging.warning("Could not write cache file %s (%s); the next load decodes again.", path, e)
        return False
    return True


def remove_stale(directory: str, prefix: str, keep: str) -> None:
    """Removes `prefix*.npz` files in `directory` other than `keep` (earlier fingerprints)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        path = os.path.join(directory, name)
        if name.startswith(prefix) and name.endswith(".npz") and path != keep:
            try:
                os.unlink(path)
                logging.info("Removed stale cache %s.", path)
            except OSError:
                pass
