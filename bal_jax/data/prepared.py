"""Datasets prepared by `python -m experiments.prepare` from their official files, no tfds.

    path = prepared_path("svhn", data_dir)          # <data_dir>/bal_jax_prepared/svhn.npz
    save_prepared(path, train_images=x_NHWC, train_labels=y_N, test_images=..., ...)
    ds = load_prepared("svhn", data_dir=data_dir)   # None when nothing is prepared there

One uncompressed .npz per dataset holds both splits as uint8 images and int32 labels, the class
names and the checksums of the files it was made from; it loads at disk speed, with neither
TensorFlow nor tfds. `load_dataset("svhn")` reads it when no tfds-prepared copy is under
data_dir (a tfds copy, when present, keeps being read as before). Ids are "<split>/<index>",
the index being the image's position in the official file.
"""

from __future__ import annotations

import os
import shlex
import time

import numpy as np
import PIL.Image
from absl import logging

from bal_jax.atomic import atomic_path
from bal_jax.data.dataset import Dataset, make_dataset

__all__ = [
    "PREPARED_FOLDER",
    "PREPARED_NAMES",
    "load_prepared",
    "prepare_command",
    "prepared_path",
    "save_prepared",
]

# The datasets experiments/prepare.py can download and convert.
PREPARED_NAMES = ("cifar10", "svhn")
PREPARED_FOLDER = "bal_jax_prepared"
# Bump when the file's layout or meaning changes: older files are then prepared again.
FORMAT = 1
_SPLITS = ("train", "test")


def prepared_path(name: str, data_dir: str) -> str:
    """Where the prepared file of dataset `name` lives under data_dir."""
    return os.path.join(os.path.expanduser(data_dir), PREPARED_FOLDER, f"{name}.npz")


def prepare_command(name: str, data_dir: str) -> str:
    """The shell command that prepares dataset `name` under data_dir."""
    return f"python -m experiments.prepare --dataset={name} --data_dir={shlex.quote(data_dir)}"


def save_prepared(
    path: str,
    *,
    train_images,
    train_labels,
    test_images,
    test_labels,
    class_names,
    sources,
) -> None:
    """Checks the arrays and writes them to `path` atomically (a killed write leaves nothing).

    Args:
      path: the .npz file to write (see `prepared_path`).
      train_images, test_images: (N, H, W, C) / (M, H, W, C) uint8.
      train_labels, test_labels: (N,) / (M,) integers in [0, len(class_names)).
      class_names: the K class names, index = label.
      sources: one line per official file it was made from, e.g. "name size sha256".
    """
    arrays = {"format": np.asarray(FORMAT, np.int64)}
    for split, images, labels in (
        ("train", train_images, train_labels),
        ("test", test_images, test_labels),
    ):
        arrays[f"{split}_images"] = np.ascontiguousarray(images, dtype=np.uint8)
        arrays[f"{split}_labels"] = np.asarray(labels, np.int32)
    arrays["class_names"] = np.asarray(class_names, dtype=str)
    arrays["sources"] = np.asarray(sources, dtype=str)
    # make_dataset's checks (shapes, label range, ids) before anything is written.
    _to_dataset("check", arrays)
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _to_dataset(name: str, arrays) -> Dataset:
    ids = {
        s: np.asarray([f"{s}/{i}" for i in range(len(arrays[f"{s}_labels"]))], dtype=str)
        for s in _SPLITS
    }
    return make_dataset(
        name=name,
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"],
        train_ids=ids["train"].reshape(-1),
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"],
        test_ids=ids["test"].reshape(-1),
        class_names=tuple(arrays["class_names"]),
    )


def _resize(images_NHWC: np.ndarray, size: int) -> np.ndarray:
    if images_NHWC.shape[1:3] == (size, size):
        return images_NHWC
    squeeze = images_NHWC.shape[-1] == 1
    out = [
        np.asarray(
            PIL.Image.fromarray(img[..., 0] if squeeze else img).resize(
                (size, size), PIL.Image.Resampling.BILINEAR
            )
        )
        for img in images_NHWC
    ]
    stacked = np.stack(out) if out else np.zeros((0, size, size), np.uint8)
    return stacked[..., None] if squeeze else stacked


def load_prepared(
    name: str, *, data_dir: str, image_size: int | None = None, display_name: str | None = None
) -> Dataset | None:
    """The dataset prepared under data_dir by experiments.prepare, or None if there is none.

    Args:
      name: one of PREPARED_NAMES.
      data_dir: the folder given to `experiments.prepare --data_dir`.
      image_size: resize to image_size x image_size (bilinear, as other sources); None keeps
        the stored 32x32.
      display_name: the Dataset's name (default: name).

    Returns:
      The `Dataset`, or None when no prepared file exists.

    Raises:
      ValueError: the file exists but is unreadable or of another format version; the message
        gives the command that prepares it again.
    """
    path = prepared_path(name, data_dir)
    if not os.path.isfile(path):
        return None
    start = time.perf_counter()
    again = f"run `{prepare_command(name, data_dir)}` again"
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # a damaged file is reported with the fix, whatever numpy raised.
        raise ValueError(f"Prepared dataset {path} is unreadable ({e}); {again}.") from e
    needed = {"format", "class_names"} | {f"{s}_{k}" for s in _SPLITS for k in ("images", "labels")}
    missing = needed - set(arrays)
    if missing or int(arrays["format"]) != FORMAT:
        found = "missing " + ", ".join(sorted(missing)) if missing else f"format {arrays['format']}"
        raise ValueError(
            f"Prepared dataset {path} is not in this bal_jax's format {FORMAT} ({found}); {again}."
        )
    if image_size is not None:
        for s in _SPLITS:
            arrays[f"{s}_images"] = _resize(arrays[f"{s}_images"], image_size)
    ds = _to_dataset(display_name or name, arrays)
    logging.info(
        "Dataset %s (%s): %d train + %d test images in %.1f s.",
        name,
        path,
        len(ds.train_labels),
        len(ds.test_labels),
        time.perf_counter() - start,
    )
    return ds
