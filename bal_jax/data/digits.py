"""scikit-learn's handwritten digits: the embedded dataset that needs no download.

    ds = load_digits()   # 1,437 train + 360 test images, (32, 32, 1) uint8, 10 classes

The 1,797 8x8 images (UCI optdigits test set, 16 grey levels 0..16) are scaled to 0..255 and
resized to 32x32 with Pillow's bilinear filter. The test split is a fixed class-stratified 20%
(360 images, 35 to 37 per class), chosen by `split_validation(labels, size=360, seed=0)`; it never
changes between runs or machines. Ids are "digits/<index in sklearn's array>".
"""

from __future__ import annotations

import gzip
import importlib.util
import os

import numpy as np
import PIL.Image

from bal_jax.data.dataset import Dataset, make_dataset
from bal_jax.data.splits import split_validation

__all__ = ["DIGITS_TEST_SIZE", "load_digits"]

DIGITS_TEST_SIZE = 360
_SPLIT_SEED = 0


def load_digits(*, image_size: int | None = None) -> Dataset:
    """Loads the digits dataset with its fixed train/test split.

    Args:
      image_size: side of the square images, default 32.

    Returns:
      A `Dataset` named "digits": 1,437 train and 360 test one-channel uint8 images.
    """
    images_NHW, labels_N = _read_digits()
    size = 32 if image_size is None else image_size
    grey_NHW = np.round(images_NHW * (255.0 / 16.0)).astype(np.uint8)
    images_NHWC = np.stack(
        [
            np.asarray(
                PIL.Image.fromarray(img, "L").resize((size, size), PIL.Image.Resampling.BILINEAR)
            )
            for img in grey_NHW
        ]
    )[..., None]
    ids_N = np.asarray([f"digits/{i}" for i in range(len(labels_N))])
    train_idx, test_idx = split_validation(labels_N, size=DIGITS_TEST_SIZE, seed=_SPLIT_SEED)
    return make_dataset(
        name="digits",
        train_images=images_NHWC[train_idx],
        train_labels=labels_N[train_idx],
        train_ids=ids_N[train_idx],
        test_images=images_NHWC[test_idx],
        test_labels=labels_N[test_idx],
        test_ids=ids_N[test_idx],
        class_names=tuple(str(c) for c in range(10)),
    )


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) float64 images (0..16) and (1797,) int32 labels, as
    `sklearn.datasets.load_digits` returns them.

    Read from the file scikit-learn ships (datasets/data/digits.csv.gz: 64 pixels then the
    label per row) without importing scikit-learn, whose import (with SciPy) took 1.5-2.5 s of
    every run on digits; scikit-learn's own loader where the file is not found.
    """
    spec = importlib.util.find_spec("sklearn")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        path = os.path.join(root, "datasets", "data", "digits.csv.gz")
        if os.path.exists(path):
            with gzip.open(path, "rt") as f:
                data = np.loadtxt(f, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int32)
    from sklearn import datasets  # another layout: scikit-learn's own loader

    bunch = datasets.load_digits()
    return bunch.images, bunch.target.astype(np.int32)
