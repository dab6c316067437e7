"""Tests for bal_jax/data/splits.py: stratified validation split and class-balanced subset."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bal_jax.data.splits import class_balanced_subset, split_validation


@st.composite
def labels_and_size(draw, *, min_size):
    n = draw(st.integers(2, 60))
    k = draw(st.integers(1, 6))
    labels = np.asarray(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    size = draw(st.integers(min_size, n - 1 if min_size == 0 else n))
    seed = draw(st.integers(0, 2**31 - 1))
    return labels, size, seed


@settings(max_examples=60, deadline=None)
@given(labels_and_size(min_size=0))
def test_split_validation_properties(case):
    labels, size, seed = case
    pool, val = split_validation(labels, size=size, seed=seed)
    assert val.shape == (size,) and pool.shape == (len(labels) - size,)
    assert np.all(np.diff(pool) > 0) and np.all(np.diff(val) > 0)  # Sorted, no repeats.
    np.testing.assert_array_equal(np.sort(np.concatenate([pool, val])), np.arange(len(labels)))
    # Stratified: each class's validation count is its proportional quota rounded up or down.
    for c in np.unique(labels):
        quota = size * np.sum(labels == c) / len(labels)
        assert np.floor(quota) <= np.sum(labels[val] == c) <= np.ceil(quota)
    pool2, val2 = split_validation(list(labels), size=size, seed=seed)
    np.testing.assert_array_equal(val, val2)
    np.testing.assert_array_equal(pool, pool2)


def test_split_validation_exact_stratification_and_seed():
    labels = np.repeat(np.arange(4), 50)  # 4 classes x 50.
    pool, val = split_validation(labels, size=40, seed=3)
    np.testing.assert_array_equal(np.bincount(labels[val]), [10, 10, 10, 10])
    assert len(np.intersect1d(pool, val)) == 0
    _, other = split_validation(labels, size=40, seed=4)
    assert not np.array_equal(val, other)


@settings(max_examples=60, deadline=None)
@given(labels_and_size(min_size=1))
def test_class_balanced_subset_properties(case):
    labels, size, seed = case
    idx = class_balanced_subset(labels, size=size, seed=seed)
    assert idx.shape == (size,) and np.all(np.diff(idx) > 0)
    assert idx.min() >= 0 and idx.max() < len(labels)
    classes, available = np.unique(labels, return_counts=True)
    taken = np.asarray([np.sum(labels[idx] == c) for c in classes])
    # Water-filling: every class holds min(available, t or t + 1) for one level t, so classes
    # not exhausted differ by at most one and exhausted ones hold at most t + 1.
    open_ = taken < available
    if open_.any():
        level = taken[open_].min()
        assert taken[open_].max() <= level + 1
        assert np.all(taken[~open_] <= level + 1)
    np.testing.assert_array_equal(idx, class_balanced_subset(labels, size=size, seed=seed))


def test_class_balanced_subset_on_imbalanced_pool():
    labels = np.concatenate([np.zeros(100), np.ones(100), np.full(3, 2)]).astype(np.int32)
    idx = class_balanced_subset(labels, size=31, seed=0)
    # Class 2 gives its 3; the other 28 split 14/14.
    np.testing.assert_array_equal(np.bincount(labels[idx]), [14, 14, 3])
    balanced = class_balanced_subset(np.repeat(np.arange(10), 500), size=1000, seed=1)
    np.testing.assert_array_equal(np.bincount(np.repeat(np.arange(10), 500)[balanced]), [100] * 10)


@pytest.mark.parametrize(
    "fn, labels, size, match",
    [
        (split_validation, np.arange(10) % 2, 10, r"validation size must be in \[0, 9\]"),
        (split_validation, np.arange(10) % 2, -1, "validation size"),
        (split_validation, np.arange(10) % 2, 2.5, "must be an integer"),
        (split_validation, np.zeros((2, 5), int), 1, "1-D"),
        (split_validation, np.zeros(5), 1, "integers"),
        (split_validation, np.zeros(1, int), 0, "at least 2"),
        (class_balanced_subset, np.arange(10) % 2, 0, r"subset size must be in \[1, 10\]"),
        (class_balanced_subset, np.arange(10) % 2, 11, "subset size"),
        (class_balanced_subset, np.arange(10) % 2, True, "must be an integer"),
    ],
)
def test_bad_input(fn, labels, size, match):
    with pytest.raises(ValueError, match=match):
        fn(labels, size=size, seed=0)
