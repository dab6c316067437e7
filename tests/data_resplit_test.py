"""bal_jax.data.resplit: the paper's Caltech-101 protocol from tfds' split (issue 13 item 7)."""

import numpy as np
import pytest

from bal_jax.data import drop_classes, make_dataset, resplit


def _toy(num_classes=4, train_per=3, test_per=2):
    rng = np.random.default_rng(0)

    def split(per, tag):
        labels = np.repeat(np.arange(num_classes), per)
        images = rng.integers(0, 256, (labels.size, 4, 4, 3), dtype=np.uint8)
        ids = np.array([f"{tag}/{i}" for i in range(labels.size)])
        return images, labels, ids

    tr, te = split(train_per, "train"), split(test_per, "test")
    names = ["accordion", "BACKGROUND_Google", "camera", "dolphin"][:num_classes]
    return make_dataset(
        name="toy",
        train_images=tr[0],
        train_labels=tr[1],
        train_ids=tr[2],
        test_images=te[0],
        test_labels=te[1],
        test_ids=te[2],
        class_names=names,
    )


def test_drop_classes_removes_images_and_relabels_in_order():
    ds = _toy()
    out = drop_classes(ds, ("background_google",))  # case-insensitive, as tfds names it
    assert out.class_names == ("accordion", "camera", "dolphin")
    keep = ds.train_labels != 1
    np.testing.assert_array_equal(out.train_images, ds.train_images[keep])
    np.testing.assert_array_equal(
        out.train_labels, np.array([0, 1, 2])[[0, 0, 0, 1, 1, 1, 2, 2, 2]]
    )
    assert out.test_images.shape[0] == 6 and set(out.test_labels) == {0, 1, 2}
    expected_mean = (ds.train_images[keep] / 255.0).mean((0, 1, 2))
    np.testing.assert_allclose(out.mean, expected_mean, rtol=1e-10)
    with pytest.raises(ValueError, match="no class 'nope'"):
        drop_classes(ds, ("nope",))


def test_resplit_partitions_the_union_stratified_and_seeded():
    ds = _toy(train_per=3, test_per=7)  # 40 images, 10 per class
    out = resplit(ds, test_fraction=0.2, seed=0)
    all_ids = np.concatenate([ds.train_ids, ds.test_ids])
    got = np.concatenate([out.train_ids, out.test_ids])
    assert sorted(got) == sorted(all_ids)  # a partition of the union
    assert out.test_ids.size == 8 and np.bincount(out.test_labels).tolist() == [2, 2, 2, 2]
    again = resplit(ds, test_fraction=0.2, seed=0)
    np.testing.assert_array_equal(again.test_ids, out.test_ids)
    assert set(resplit(ds, test_fraction=0.2, seed=1).test_ids) != set(out.test_ids)
    with pytest.raises(ValueError, match="test_fraction"):
        resplit(ds, test_fraction=1.0, seed=0)
