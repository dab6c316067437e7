"""Reshaping a loaded dataset into the paper's protocol: dropping classes, re-splitting.

    ds = load_dataset("caltech101")                        # tfds: 102 labels, 3,060 train images
    ds = drop_classes(ds, ("background_google",))          # the paper's 101 object classes
    ds = resplit(ds, test_fraction=0.1, seed=0)            # seeded split of the whole set

tfds' Caltech-101 has a 102nd "background_google" label (clutter, not an object class) and a
train split of 30 images per class (3,060); the paper trained on 101 classes and about 7,857
images, i.e. a split of the whole set. `resplit` pools train and test and draws a
class-stratified test set (the rest is the training set).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bal_jax.data.dataset import Dataset, make_dataset
from bal_jax.data.splits import split_validation

__all__ = ["drop_classes", "resplit"]


def drop_classes(ds: Dataset, names: Sequence[str]) -> Dataset:
    """`ds` without the images of the classes `names` (matched case-insensitively).

    Args:
      ds: the dataset.
      names: class names to drop; each must be one of ds.class_names.

    Returns:
      A Dataset with the remaining classes relabeled 0..K'-1 in their original order, and
      train statistics recomputed.

    Raises:
      ValueError: a name is not a class of `ds`, or no class would remain.
    """
    lower = [c.lower() for c in ds.class_names]
    drop = set()
    for name in names:
        if name.lower() not in lower:
            raise ValueError(f"{ds.name} has no class {name!r} to drop (classes: {lower[:5]}...)")
        drop.add(lower.index(name.lower()))
    keep_K = np.array([k for k in range(len(lower)) if k not in drop], np.int64)
    if keep_K.size == 0:
        raise ValueError(f"dropping {list(names)} leaves no class in {ds.name}")
    new_label = np.full(len(lower), -1, np.int64)
    new_label[keep_K] = np.arange(keep_K.size)

    def part(images, labels, ids):
        keep = new_label[labels] >= 0
        return images[keep], new_label[labels[keep]], ids[keep]

    train = part(ds.train_images, ds.train_labels, ds.train_ids)
    test = part(ds.test_images, ds.test_labels, ds.test_ids)
    return _remake(ds, train, test, tuple(ds.class_names[k] for k in keep_K))


def resplit(ds: Dataset, *, test_fraction: float, seed: int) -> Dataset:
    """Pools train and test and draws a new class-stratified, seeded test split.

    Args:
      ds: the dataset.
      test_fraction: share of all images that go to the test split, in (0, 1).
      seed: NumPy seed of the draw (`split_validation`'s largest-remainder stratification).

    Returns:
      A Dataset whose train and test splits partition the union of ds's splits; ids are kept.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    images = np.concatenate([ds.train_images, ds.test_images])
    labels = np.concatenate([ds.train_labels, ds.test_labels])
    ids = np.concatenate([ds.train_ids, ds.test_ids])
    size = max(1, round(test_fraction * labels.shape[0]))
    train_idx, test_idx = split_validation(labels, size=size, seed=seed)
    train = (images[train_idx], labels[train_idx], ids[train_idx])
    test = (images[test_idx], labels[test_idx], ids[test_idx])
    return _remake(ds, train, test, ds.class_names)


def _remake(ds: Dataset, train, test, class_names) -> Dataset:
    return make_dataset(
        name=ds.name,
        train_images=train[0],
        train_labels=train[1],
        train_ids=train[2],
        test_images=test[0],
        test_labels=test[1],
        test_ids=test[2],
        class_names=tuple(class_names),
    )
