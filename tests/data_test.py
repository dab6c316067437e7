"""Tests for the digits source, the Dataset checks and load_dataset's argument handling."""

import numpy as np
import pytest

from bal_jax.data import dataset
from bal_jax.data.digits import DIGITS_TEST_SIZE
from bal_jax.data.load import load_dataset


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_digits_shapes_dtypes_and_split(digits):
    from sklearn.datasets import load_digits as sk_digits

    ds = digits
    assert ds.name == "digits" and ds.class_names == tuple("0123456789")
    assert ds.train_images.shape == (1437, 32, 32, 1) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (DIGITS_TEST_SIZE, 32, 32, 1)
    assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
    assert ds.train_ids.dtype.kind == "U"
    ids = np.concatenate([ds.train_ids, ds.test_ids])
    assert len(set(ids)) == 1797
    # Labels agree with scikit-learn's for the same id; the test split is stratified.
    target = sk_digits().target
    index = np.asarray([int(i.split("/")[1]) for i in ds.train_ids])
    np.testing.assert_array_equal(ds.train_labels, target[index])
    quota = DIGITS_TEST_SIZE * np.bincount(target) / len(target)
    counts = np.bincount(ds.test_labels, minlength=10)
    assert np.all(np.floor(quota) <= counts) and np.all(counts <= np.ceil(quota))
    # 16 grey levels scaled to the full uint8 range; real strokes, not blanks.
    assert ds.train_images.max() == 255 and ds.train_images.min() == 0
    ref = ds.train_images / 255.0
    np.testing.assert_allclose(ds.mean, [ref.mean()], rtol=1e-10)
    np.testing.assert_allclose(ds.std, [ref.std()], rtol=1e-10)


def test_digits_are_read_without_importing_scikit_learn():
    """The file scikit-learn ships, read directly, equals its loader's arrays; a fresh process
    loading digits does not import scikit-learn (1.5 s of every digits run before)."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits as sk_digits

    from bal_jax.data.digits import _read_digits

    images, labels = _read_digits()
    ref = sk_digits()
    np.testing.assert_array_equal(images, ref.images)
    np.testing.assert_array_equal(labels, ref.target)
    code = (
        "import sys; from bal_jax.data.load import load_dataset; load_dataset('digits'); "
        "print('sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_digits_is_deterministic_and_resizable(digits):
    again = load_dataset("digits")
    for field in digits._fields:
        np.testing.assert_array_equal(getattr(again, field), getattr(digits, field))
    small = load_dataset("digits", image_size=8)
    assert small.train_images.shape == (1437, 8, 8, 1)
    np.testing.assert_array_equal(small.train_ids, digits.train_ids)


def test_channel_stats_matches_numpy():
    x = np.random.default_rng(0).integers(0, 256, (5, 4, 3, 2), dtype=np.uint8)
    mean, std = dataset.channel_stats(x)
    np.testing.assert_allclose(mean, (x / 255.0).mean((0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(std, (x / 255.0).std((0, 1, 2)), rtol=1e-12)


def _arrays(**overrides):
    kw = dict(
        name="t",
        train_images=np.zeros((4, 8, 8, 3), np.uint8),
        train_labels=np.asarray([0, 1, 0, 1]),
        train_ids=np.asarray(["a", "b", "c", "d"]),
        test_images=np.zeros((2, 8, 8, 3), np.uint8),
        test_labels=np.asarray([1, 0]),
        test_ids=np.asarray(["e", "f"]),
        class_names=("x", "y"),
    )
    kw.update(overrides)
    return kw


def test_make_dataset_constant_channel_gets_unit_std():
    ds = dataset.make_dataset(**_arrays())
    assert ds.mean == (0.0, 0.0, 0.0) and ds.std == (1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"train_images": np.zeros((4, 8, 8, 3), np.float32)}, "uint8"),
        ({"train_images": np.zeros((4, 8, 8), np.uint8)}, r"\(N, H, W, C\)"),
        ({"train_labels": np.asarray([0, 1, 2, 0])}, r"lie in \[0, 2\)"),
        ({"train_labels": np.asarray([0, 1, 0])}, r"must be \(4,\) integers"),
        ({"test_ids": np.asarray(["a", "f"])}, "not unique"),
        ({"test_images": np.zeros((2, 16, 16, 3), np.uint8)}, "test images are"),
        ({"class_names": ()}, "no classes"),
    ],
)
def test_make_dataset_rejects_bad_arrays(overrides, match):
    with pytest.raises(ValueError, match=match):
        dataset.make_dataset(**_arrays(**overrides))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": ""}, "non-empty string"),
        ({"name": "digits", "image_size": 0}, "positive int"),
        ({"name": "digits", "image_size": 32.0}, "positive int"),
        ({"name": "folder:"}, "needs a path"),
        ({"name": "folder:/no/such/dir"}, "does not exist"),
    ],
)
def test_load_dataset_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(**kwargs)


def test_active_splits_are_disjoint_sized_and_seeded():
    from bal_jax.data import load_active_splits

    s = load_active_splits("digits", val_size=100, seed=3, train_subset=600, test_subset=50)
    assert (len(s.pool.labels), len(s.val.labels), len(s.test.labels)) == (500, 100, 50)
    assert s.pool_ids.shape == (500,) and len(set(s.pool_ids)) == 500
    # The pool's images and labels are the training images of its ids.
    full = load_dataset("digits")
    index = {i: n for n, i in enumerate(full.train_ids)}
    rows = [index[i] for i in s.pool_ids]
    np.testing.assert_array_equal(s.pool.images, full.train_images[rows])
    np.testing.assert_array_equal(s.pool.labels, full.train_labels[rows])
    again = load_active_splits("digits", val_size=100, seed=3, train_subset=600, test_subset=50)
    np.testing.assert_array_equal(again.pool_ids, s.pool_ids)
    other = load_active_splits("digits", val_size=100, seed=4, train_subset=600, test_subset=50)
    assert set(other.pool_ids) != set(s.pool_ids)
    for kwargs, match in (
        (dict(val_size=1437), "val_size=1437 leaves no pool"),
        (dict(val_size=10, train_subset=5000), "train_subset=5000 exceeds the 1437"),
        (dict(val_size=10, test_subset=0), r"test_subset must be in \[1, 360\]"),
    ):
        with pytest.raises(ValueError, match=match):
            load_active_splits("digits", **kwargs)
