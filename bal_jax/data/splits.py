"""Seeded, class-stratified index splits of a labelled pool.

Host-side index logic on NumPy arrays (it runs once per run, before anything is put on a device):

    pool_idx, val_idx = split_validation(ds.train_labels, size=1_000, seed=0)
    subset_idx = class_balanced_subset(ds.train_labels, size=10_000, seed=0)

Both functions are deterministic in `seed` alone, return sorted int64 index arrays, and treat the
classes that occur in `labels` as the classes (a label value that never occurs gets nothing).
"""

from __future__ import annotations

import numpy as np

__all__ = ["class_balanced_subset", "split_validation"]


def _check_labels(labels) -> np.ndarray:
    labels_N = np.asarray(labels)
    if labels_N.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {labels_N.shape}.")
    if labels_N.size and not np.issubdtype(labels_N.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels_N.dtype}.")
    return labels_N.astype(np.int64, copy=False)


def _check_size(size, n: int, *, what: str, allow_zero: bool) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"{what} size must be an integer, got {size!r}.")
    size = int(size)
    low = 0 if allow_zero else 1
    if not low <= size <= n:
        raise ValueError(f"{what} size must be in [{low}, {n}] for {n} labels, got {size}.")
    return size


def _per_class_members(labels_N: np.ndarray, rng: np.random.Generator):
    """Classes present, and for each a seeded random permutation of its indices."""
    classes_K, inverse_N = np.unique(labels_N, return_inverse=True)
    order_N = np.argsort(inverse_N, kind="stable")
    counts_K = np.bincount(inverse_N, minlength=len(classes_K))
    members = np.split(order_N, np.cumsum(counts_K)[:-1])
    return counts_K, [rng.permutation(m) for m in members]


def _largest_remainder(quota_K: np.ndarray, total: int) -> np.ndarray:
    """Integer allocation summing to `total` closest to the real-valued `quota_K` (Hamilton)."""
    alloc_K = np.floor(quota_K).astype(np.int64)
    short = total - int(alloc_K.sum())
    # Ties broken by class order (stable sort), so the result depends on nothing but the inputs.
    alloc_K[np.argsort(-(quota_K - alloc_K), kind="stable")[:short]] += 1
    return alloc_K


def split_validation(labels, *, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Splits a labelled set into a pool and a class-stratified validation set.

    Each class gives `size * n_c / N` images to validation, rounded by the largest-remainder
    method, so the validation class histogram matches the full one as closely as integers allow.
    Which images of a class go to validation is a seeded random choice.

    Args:
      labels: (N,) integer class labels.
      size: number of validation indices, in [0, N - 1] (the pool is never empty).
      seed: seed of the NumPy generator that picks the images.

    Returns:
      (pool_idx, val_idx): sorted, disjoint int64 index arrays covering range(N), of lengths
      N - size and size.
    """
    labels_N = _check_labels(labels)
    n = labels_N.shape[0]
    if n < 2:
        raise ValueError(f"split_validation needs at least 2 labels, got {n}.")
    size = _check_size(size, n - 1, what="validation", allow_zero=True)
    counts_K, members = _per_class_members(labels_N, np.random.default_rng(seed))
    take_K = _largest_remainder(counts_K * (size / n), size)
    val_idx = np.sort(np.concatenate([m[:t] for m, t in zip(members, take_K, strict=True)]))
    pool_mask_N = np.ones(n, dtype=bool)
    pool_mask_N[val_idx] = False
    return np.flatnonzero(pool_mask_N), val_idx


def class_balanced_subset(labels, *, size: int, seed: int) -> np.ndarray:
    """A fixed, seeded subset with (as nearly as possible) equally many images per class.

    Every class gets `size // K` images; the `size % K` left over go one each to classes picked
    at random (seeded). A class with fewer images than its share gives all it has and the
    shortfall is shared equally among the others (water-filling), so the result always has
    exactly `size` indices and the classes that are not exhausted differ by at most one.

    Args:
      labels: (N,) integer class labels, K distinct classes.
      size: number of indices to pick, in [1, N].
      seed: seed of the NumPy generator that picks the images.

    Returns:
      idx: (size,) sorted int64 indices into labels, without repeats.
    """
    labels_N = _check_labels(labels)
    size = _check_size(size, labels_N.shape[0], what="subset", allow_zero=False)
    rng = np.random.default_rng(seed)
    counts_K, members = _per_class_members(labels_N, rng)
    # The highest level t with sum_c min(n_c, t) <= size (binary search), then one more image
    # for as many randomly chosen classes above that level as are needed to reach size.
    lo, hi = 0, int(counts_K.max())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if np.minimum(counts_K, mid).sum() <= size else (lo, mid - 1)
    take_K = np.minimum(counts_K, lo)
    above_K = np.flatnonzero(counts_K > lo)
    take_K[rng.permutation(above_K)[: size - int(take_K.sum())]] += 1
    return np.sort(np.concatenate([m[:t] for m, t in zip(members, take_K, strict=True)]))
