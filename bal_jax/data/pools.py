"""A dataset cut into the three splits of an active-learning run: pool, validation and test.

    splits = load_active_splits("digits", val_size=200, seed=0)
    splits.pool.images, splits.pool.labels, splits.pool_ids    # what a selector may label
    splits.val                                                 # choices (beta, settings)
    splits.test                                                # reports only

The runner (`experiments.main`), `experiments.noise`, `experiments.classifiers` and
`experiments.diagnose` all load their data here, so a preset means the same images in each.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bal_jax.data.load import load_dataset
from bal_jax.data.resplit import drop_classes as drop_class_names
from bal_jax.data.resplit import resplit
from bal_jax.data.splits import class_balanced_subset, split_validation
from bal_jax.settings import Split

__all__ = ["ActiveSplits", "load_active_splits"]


@dataclasses.dataclass(frozen=True)
class ActiveSplits:
    """Pool, validation and test images of one dataset, with the pool's ids and the
    normalisation statistics of the whole training split."""

    name: str
    pool: Split
    val: Split
    test: Split
    pool_ids: np.ndarray
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def load_active_splits(
    dataset: str,
    *,
    val_size: int,
    seed: int = 0,
    data_dir: str | None = None,
    image_size: int | None = None,
    drop_classes: tuple[str, ...] = (),
    resplit_test_fraction: float | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
) -> ActiveSplits:
    """Loads `dataset` (any name of `load_dataset`) and splits it, deterministic in `seed`.

    Args:
      dataset: 'digits', 'cifar10', 'svhn', 'caltech101', 'folder:PATH', ...
      val_size: class-stratified validation images carved from the training images.
      seed: draws the subsets and the validation split.
      data_dir: tfds data_dir holding prepared datasets.
      image_size: resize the images to this side.
      drop_classes: class names to drop (e.g. Caltech-101's background_google).
      resplit_test_fraction: pool train and test, then draw this class-stratified test share.
      train_subset: a class-balanced subset of the training images as pool + validation.
      test_subset: a class-balanced subset of the test images (smoke runs only).

    Returns:
      The splits; the pool is the training images (or their subset) less the validation ones.

    Raises:
      ValueError / FileNotFoundError: one sentence naming the bad argument or the missing data.
    """
    ds = load_dataset(dataset, data_dir=data_dir, image_size=image_size)
    if drop_classes:
        ds = drop_class_names(ds, drop_classes)
    if resplit_test_fraction is not None:
        ds = resplit(ds, test_fraction=resplit_test_fraction, seed=seed)
    labels = np.asarray(ds.train_labels)
    idx = np.arange(labels.shape[0])
    if train_subset is not None:
        if train_subset > labels.shape[0]:
            raise ValueError(
                f"train_subset={train_subset} exceeds the {labels.shape[0]} training images"
            )
        idx = np.asarray(class_balanced_subset(labels, size=train_subset, seed=seed))
    if val_size >= idx.size:
        raise ValueError(f"val_size={val_size} leaves no pool out of {idx.size} training images")
    pool_rel, val_rel = split_validation(labels[idx], size=val_size, seed=seed)
    pool_idx, val_idx = idx[np.asarray(pool_rel)], idx[np.asarray(val_rel)]
    test_labels = np.asarray(ds.test_labels)
    test_idx = np.arange(test_labels.shape[0])
    if test_subset is not None:
        if not 1 <= test_subset <= test_labels.shape[0]:
            raise ValueError(f"test_subset must be in [1, {test_labels.shape[0]}]")
        test_idx = np.asarray(class_balanced_subset(test_labels, size=test_subset, seed=seed))
    return ActiveSplits(
        name=ds.name,
        pool=Split(ds.train_images[pool_idx], labels[pool_idx]),
        val=Split(ds.train_images[val_idx], labels[val_idx]),
        test=Split(ds.test_images[test_idx], test_labels[test_idx]),
        pool_ids=np.asarray(ds.train_ids)[pool_idx],
        class_names=tuple(ds.class_names),
        mean=tuple(ds.mean),
        std=tuple(ds.std),
    )
