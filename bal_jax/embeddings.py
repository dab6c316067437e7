"""Embeddings a user already has (CLIP, DINOv2, a company model), read from a file by image id.

    feats_ND = read_embeddings("clip.npz", ids=["a/1.jpg", "b/2.png"], root="/data/photos")

A file holds one row per image, keyed by the image's id (its path relative to the images
folder, as the labeling tool names it) or by its path (absolute, or relative to the images
folder). Formats:

- ``.npz``: an array ``ids`` (or ``paths``) of strings and an array ``embeddings`` (or
  ``features``) of shape (N, D);
- ``.npy``: an (N, D) array, with the ids one per line in a sibling ``<name>.ids.txt``;
- ``.csv``: a header whose first column is ``id`` or ``path`` and whose other columns are
  the D numbers (e.g. ``id,e0,e1,...``);
- ``.parquet``: a column ``id`` or ``path`` and either one list column ``embedding`` or D
  numeric columns (needs ``pyarrow``).

Every check runs before any work and fails with one sentence (`EmbeddingsError`): unreadable
or unknown format, duplicate ids, images without a row, rows for images that are not there
(unless ``allow_extra``), NaN or infinite values, a dimension other than ``dim``.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence

import numpy as np

__all__ = ["FORMATS", "EmbeddingsError", "read_embeddings", "read_embeddings_table"]

FORMATS = (".npz", ".npy", ".csv", ".parquet")
_LISTED = 5


class EmbeddingsError(ValueError):
    """A bad embeddings file, in one sentence."""


def _listed(items: Sequence[str]) -> str:
    items = list(items)
    more = f" and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
    return ", ".join(items[:_LISTED]) + more


def _read_npz(path: str) -> tuple[list[str], np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        key = next((k for k in ("ids", "paths") if k in z), None)
        arr = next((k for k in ("embeddings", "features") if k in z), None)
        if key is None or arr is None:
            raise EmbeddingsError(
                f"{path} must hold an array 'ids' (or 'paths') and an array 'embeddings' (or "
                f"'features'); it holds {_listed(sorted(z.files)) or 'nothing'}"
            )
        return [str(i) for i in z[key].tolist()], np.asarray(z[arr])


def _read_npy(path: str) -> tuple[list[str], np.ndarray]:
    ids_path = os.path.splitext(path)[0] + ".ids.txt"
    if not os.path.exists(ids_path):
        raise EmbeddingsError(
            f"{path} is an .npy array, which names no images: put the ids, one per line in "
            f"the array's row order, in {ids_path} (or use .npz/.csv/.parquet)"
        )
    with open(ids_path, encoding="utf-8") as f:
        ids = [line.rstrip("\n") for line in f if line.strip()]
    return ids, np.load(path, allow_pickle=False)


def _read_csv(path: str) -> tuple[list[str], np.ndarray]:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise EmbeddingsError(f"{path} is not UTF-8 text, so not an embeddings CSV") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or rows[0][:1] not in (["id"], ["path"]):
        raise EmbeddingsError(
            f"{path}: the first line must be a header starting with 'id' or 'path' (then one "
            "column per dimension)"
        )
    width = len(rows[0])
    ids, values = [], []
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != width:
            raise EmbeddingsError(f"{path} line {n}: {len(row)} fields, the header has {width}")
        try:
            values.append([float(v) for v in row[1:]])
        except ValueError:
            raise EmbeddingsError(f"{path} line {n}: a value is not a number") from None
        ids.append(row[0])
    return ids, np.asarray(values, np.float64).reshape(len(ids), width - 1)


def _read_parquet(path: str) -> tuple[list[str], np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise EmbeddingsError(
            f"{path}: reading .parquet needs pyarrow (pip install pyarrow), or save the "
            "embeddings as .npz or .csv"
        ) from None
    table = pq.read_table(path)
    names = table.column_names
    key = next((k for k in ("id", "path") if k in names), None)
    if key is None:
        raise EmbeddingsError(f"{path} has no column 'id' or 'path' (columns: {_listed(names)})")
    ids = [str(i) for i in table.column(key).to_pylist()]
    if "embedding" in names:
        rows = table.column("embedding").to_pylist()
        dims = {len(r) if r is not None else -1 for r in rows}
        if len(dims) > 1:
            raise EmbeddingsError(f"{path}: the 'embedding' lists differ in length")
        return ids, np.asarray(rows, np.float64).reshape(len(ids), -1)
    cols = [c for c in names if c != key]
    return ids, np.stack([np.asarray(table.column(c).to_pylist(), np.float64) for c in cols], 1)


_READERS = {".npz": _read_npz, ".npy": _read_npy, ".csv": _read_csv, ".parquet": _read_parquet}


def read_embeddings_table(path: str) -> tuple[list[str], np.ndarray]:
    """(ids as written in the file, (N, D) float32 rows), checked for shape, duplicates, NaN."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in _READERS:
        raise EmbeddingsError(f"{path}: embeddings must be one of {', '.join(FORMATS)}")
    if not os.path.isfile(path):
        raise EmbeddingsError(f"embeddings file {path} does not exist")
    try:
        ids, values = _READERS[ext](path)
    except EmbeddingsError:
        raise
    except (OSError, ValueError) as e:  # a damaged file: numpy's / pyarrow's own words
        raise EmbeddingsError(f"{path} could not be read as {ext} embeddings ({e})") from None
    values = np.asarray(values)
    if values.ndim != 2 or values.shape[0] != len(ids) or values.shape[1] < 1:
        raise EmbeddingsError(
            f"{path}: need one row of at least one number per id; got {len(ids)} ids and an "
            f"array of shape {values.shape}"
        )
    if not np.issubdtype(values.dtype, np.number):
        raise EmbeddingsError(f"{path}: the embeddings are not numbers ({values.dtype})")
    seen, dup = set(), []
    for i in ids:
        (dup.append(i) if i in seen else seen.add(i))
    if dup:
        raise EmbeddingsError(f"{path} lists {len(dup)} id(s) twice: {_listed(dup)}")
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise EmbeddingsError(
            f"{path}: {int(bad.sum())} row(s) hold NaN or infinite values: "
            f"{_listed([ids[n] for n in np.flatnonzero(bad)])}"
        )
    return ids, values.astype(np.float32)


def read_embeddings(
    path: str,
    ids: Sequence[str],
    *,
    root: str | None = None,
    dim: int | None = None,
    allow_extra: bool = False,
) -> np.ndarray:
    """(len(ids), D) float32 embeddings of `ids`, in their order.

    Args:
      path: the embeddings file (see the module docstring for the formats).
      ids: the images' ids (paths relative to `root`).
      root: the images folder; rows keyed by a path (absolute or relative to it) match too.
      dim: the dimension the rows must have (e.g. of embeddings read earlier), or None.
      allow_extra: accept rows of images that are not in `ids` (e.g. a file covering more
        folders); by default they are refused, as a sign of the wrong file or folder.
    """
    file_ids, values = read_embeddings_table(path)
    if dim is not None and values.shape[1] != dim:
        raise EmbeddingsError(f"{path} has {values.shape[1]}-dimensional rows, expected {dim}")
    where: dict[str, int] = {}
    for n, i in enumerate(file_ids):
        key = i
        if root is not None and os.path.isabs(i):
            rel = os.path.relpath(i, root)
            key = rel if not rel.startswith("..") else i
        where[key.replace(os.sep, "/")] = n
    want = [str(i) for i in ids]
    missing = [i for i in want if i not in where]
    if missing:
        raise EmbeddingsError(
            f"{path} has no row for {len(missing)} of the {len(want)} image(s): {_listed(missing)}"
        )
    if not allow_extra:
        extra = sorted(set(where) - set(want))
        if extra:
            raise EmbeddingsError(
                f"{path} has rows for {len(extra)} image(s) that are not in the images folder: "
                f"{_listed(extra)} (wrong file or folder?)"
            )
    return values[[where[i] for i in want]]
