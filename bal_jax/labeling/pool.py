"""The image pool of a labeling project: scan a folder, hash, decode once, notice changes.

    snap = scan_folder("/data/photos")                   # ids, sizes, mtimes; no decoding
    pool, change = update_pool(old_pool, "/data/photos", snap, image_size=32)

An image's id is its POSIX path relative to the folder; a SHA-256 of its bytes notices a file
replaced under the same name. Hashes are recomputed only for files whose size or mtime moved,
and only new or changed files are decoded, so re-running a command on 20,000 images costs a
directory listing.
"""

from __future__ import annotations

import hashlib
import os
from typing import NamedTuple

import numpy as np

from bal_jax.data import decode

__all__ = ["IMAGE_EXTENSIONS", "Pool", "PoolChange", "file_hash", "scan_folder", "update_pool"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class Pool(NamedTuple):
    """Decoded images of a folder, sorted by id.

    Attributes:
      ids_N: (N,) str, paths relative to the folder.
      stats_N2: (N, 2) int64, file size and mtime in ns when last hashed.
      hashes_N: (N,) str, SHA-256 of the file bytes.
      images_NHWC: (N, S, S, 3) uint8.
      skipped: (M,) str, "id<TAB>size<TAB>mtime<TAB>reason" of unreadable files.
    """

    ids_N: np.ndarray
    stats_N2: np.ndarray
    hashes_N: np.ndarray
    images_NHWC: np.ndarray
    skipped: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        return self._asdict()

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Pool:
        return cls(**{f: arrays[f] for f in cls._fields})


class PoolChange(NamedTuple):
    """What a rescan found: ids added, removed, changed in content, unreadable (id, reason)."""

    added: list[str]
    removed: list[str]
    changed: list[str]
    unreadable: list[tuple[str, str]]

    @property
    def any(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def scan_folder(root: str) -> dict[str, tuple[int, int]]:
    """{id: (size, mtime_ns)} of every image file below `root` (any depth, hidden skipped).

    Args:
      root: the images folder.

    Returns:
      The files with an image extension (any letter case), keyed by POSIX relative path.
    """
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            st = os.stat(os.path.join(dirpath, name))
            rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            out[rel] = (st.st_size, st.st_mtime_ns)
    return dict(sorted(out.items()))


def file_hash(path: str) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def empty_pool(image_size: int) -> Pool:
    return Pool(
        np.zeros(0, "<U1"),
        np.zeros((0, 2), np.int64),
        np.zeros(0, "<U64"),
        np.zeros((0, image_size, image_size, 3), np.uint8),
        np.zeros(0, "<U1"),
    )


def update_pool(
    old: Pool, root: str, snapshot: dict[str, tuple[int, int]], *, image_size: int
) -> tuple[Pool, PoolChange]:
    """Brings `old` in line with the folder: decodes new and changed files, drops removed ones.

    Args:
      old: the pool as stored (an `empty_pool` on the first scan).
      root: the images folder.
      snapshot: `scan_folder(root)`.
      image_size: side every image is resized to.

    Returns:
      (new pool sorted by id, what changed). Unreadable files are left out and listed.
    """
    old_index = {str(i): n for n, i in enumerate(old.ids_N)}
    old_skipped = {}
    for line in old.skipped:
        rel, size, mtime, reason = str(line).split("\t", 3)
        old_skipped[rel] = ((int(size), int(mtime)), reason)
    keep: dict[str, int] = {}
    todo: list[str] = []
    changed: list[str] = []
    unreadable: list[tuple[str, str]] = []
    hashes: dict[str, str] = {}
    for rel, stat in snapshot.items():
        if rel in old_skipped and old_skipped[rel][0] == stat:
            unreadable.append((rel, old_skipped[rel][1]))
            continue
        n = old_index.get(rel)
        if n is not None and tuple(old.stats_N2[n]) == stat:
            keep[rel] = n
            continue
        digest = file_hash(os.path.join(root, rel))
        if n is not None and old.hashes_N[n] == digest:
            keep[rel] = n  # touched, same bytes
        else:
            todo.append(rel)
            if n is not None:
                changed.append(rel)
        hashes[rel] = digest
    images, errors = decode.decode_images(
        [os.path.join(root, r) for r in todo], image_size=image_size, channels=3
    )
    decoded = {}
    for rel, img, err in zip(todo, images, errors, strict=True):
        if err is None:
            decoded[rel] = img
        else:
            unreadable.append((rel, err))
    ids = sorted([*keep, *decoded])
    pool = Pool(
        ids_N=np.asarray(ids, dtype=str).reshape(-1),
        stats_N2=np.asarray([snapshot[i] for i in ids], np.int64).reshape(-1, 2),
        hashes_N=np.asarray(
            [hashes.get(i) or old.hashes_N[keep[i]] for i in ids], dtype=str
        ).reshape(-1),
        images_NHWC=np.stack(
            [decoded[i] if i in decoded else old.images_NHWC[keep[i]] for i in ids]
        )
        if ids
        else empty_pool(image_size).images_NHWC,
        skipped=np.asarray(
            [f"{r}\t{snapshot[r][0]}\t{snapshot[r][1]}\t{why}" for r, why in sorted(unreadable)],
            dtype=str,
        ).reshape(-1),
    )
    new_ids = set(ids)
    change = PoolChange(
        added=sorted(set(decoded) - set(changed)),
        removed=sorted(set(old_index) - new_ids),
        changed=sorted(set(changed) & new_ids),
        unreadable=sorted(unreadable),
    )
    return pool, change
