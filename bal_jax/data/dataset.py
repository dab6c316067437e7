"""The in-memory dataset every source returns, and the checks and statistics all sources share.

    ds = make_dataset(name="toy", train_images=x_NHWC, train_labels=y_N, train_ids=ids_N, ...)
    x = (ds.train_images / 255 - np.asarray(ds.mean)) / np.asarray(ds.std)

Images stay uint8 on the host (and later on the device); normalisation happens inside jit.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["MODEL_MULTIPLE", "Dataset", "channel_stats", "make_dataset"]

# The VGG16 of the paper halves the spatial size five times, so sides must be multiples of 32.
MODEL_MULTIPLE = 32
# 28x28 (MNIST-like) images are zero-padded by 2 on each side to 32x32, the usual fix.
_PAD_FROM, _PAD_TO = 28, 32


class Dataset(NamedTuple):
    """A labelled image dataset held as host NumPy arrays.

    Attributes:
      name: short name for logs and reports (e.g. "digits", "cifar10", "folder:cifar10-jpg").
      train_images: (N, H, W, C) uint8.
      train_labels: (N,) int32 in [0, len(class_names)).
      train_ids: (N,) str array, a stable id per image (relative file path, "<split>/<index>", ...).
      test_images: (M, H, W, C) uint8, same H, W, C as train.
      test_labels: (M,) int32.
      test_ids: (M,) str array; ids are unique across train and test.
      class_names: the K class names, index = label.
      mean: per-channel mean of train_images / 255 (C floats).
      std: per-channel standard deviation of train_images / 255 (C floats, > 0).
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    train_ids: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    test_ids: np.ndarray
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def channel_stats(images_NHWC: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and standard deviation of uint8 images, in [0, 1] units.

    Sums and sums of squares are accumulated as integers in chunks, so 50,000 CIFAR images
    need neither a float copy (150M values would be 1.2 GB in float64) nor rounding care.

    Args:
      images_NHWC: (N, H, W, C) uint8 images, N >= 1.

    Returns:
      (mean, std): two tuples of C Python floats.
    """
    c = images_NHWC.shape[-1]
    sum_C = np.zeros(c, np.uint64)
    sumsq_C = np.zeros(c, np.uint64)
    for start in range(0, images_NHWC.shape[0], 1024):
        # Reduce over images first (long contiguous rows), then fold positions into channels.
        chunk_BD = images_NHWC[start : start + 1024].reshape(-1, images_NHWC[0].size)
        chunk_BD = chunk_BD.astype(np.uint32)
        sum_C += chunk_BD.sum(0, dtype=np.uint64).reshape(-1, c).sum(0)
        sumsq_C += (chunk_BD * chunk_BD).sum(0, dtype=np.uint64).reshape(-1, c).sum(0)
    n = images_NHWC.size // c
    # Python ints: n * sum(x^2) - sum(x)^2 is exact before the one division.
    means = tuple(int(s) / n / 255.0 for s in sum_C)
    stds = tuple(
        ((n * int(q) - int(s) ** 2) / n**2) ** 0.5 / 255.0
        for s, q in zip(sum_C, sumsq_C, strict=True)
    )
    return means, stds


def _pad_28(images_NHWC: np.ndarray) -> np.ndarray:
    pad = (_PAD_TO - _PAD_FROM) // 2
    return np.pad(images_NHWC, ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def _check_split(split: str, images, labels, ids, num_classes: int):
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            f"{split}_images must be (N, H, W, C) uint8, got {images.dtype} {images.shape}."
        )
    labels = np.asarray(labels)
    if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{split}_labels must be ({images.shape[0]},) integers, "
            f"got {labels.dtype} {labels.shape}."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{split}_labels must lie in [0, {num_classes}), "
            f"got range [{labels.min()}, {labels.max()}]."
        )
    ids = np.asarray(ids)
    if ids.shape != images.shape[:1] or ids.dtype.kind != "U":
        raise ValueError(
            f"{split}_ids must be ({images.shape[0]},) str, got {ids.dtype} {ids.shape}."
        )
    return images, labels.astype(np.int32), ids


def make_dataset(
    *,
    name: str,
    train_images,
    train_labels,
    train_ids,
    test_images,
    test_labels,
    test_ids,
    class_names,
) -> Dataset:
    """Checks a source's arrays, pads 28x28 images to 32x32 and adds the train statistics.

    Args:
      name: dataset name for logs.
      train_images, test_images: (N, H, W, C) / (M, H, W, C) uint8, same H, W, C.
      train_labels, test_labels: (N,) / (M,) integer labels in [0, K).
      train_ids, test_ids: (N,) / (M,) str ids, unique over both splits.
      class_names: K class names.

    Returns:
      The `Dataset`, labels as int32, mean/std computed on the (padded) train images.
    """
    class_names = tuple(str(c) for c in class_names)
    if not class_names:
        raise ValueError(f"dataset {name!r} has no classes.")
    k = len(class_names)
    train = _check_split("train", train_images, train_labels, train_ids, k)
    test = _check_split("test", test_images, test_labels, test_ids, k)
    if train[0].shape[0] == 0:
        raise ValueError(f"dataset {name!r} has no train images.")
    if train[0].shape[1:] != test[0].shape[1:] and test[0].shape[0]:
        raise ValueError(
            f"dataset {name!r}: train images are {train[0].shape[1:]} but test images are "
            f"{test[0].shape[1:]}."
        )
    all_ids = np.concatenate([train[2], test[2]])
    if len(np.unique(all_ids)) != len(all_ids):
        raise ValueError(f"dataset {name!r}: image ids are not unique across train and test.")
    if train[0].shape[1:3] == (_PAD_FROM, _PAD_FROM):
        train = (_pad_28(train[0]), *train[1:])
        test = (_pad_28(test[0]), *test[1:])
    mean, std = channel_stats(train[0])
    # A constant channel would divide by zero in normalisation; 1.0 leaves it merely centred.
    std = tuple(s if s > 0 else 1.0 for s in std)
    return Dataset(name, *train, *test, class_names, mean, std)
