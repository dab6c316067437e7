"""bal_jax.heads: the linear head reaches its optimum, CV chooses on the labels only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bal_jax import heads


def blobs(n_per, d=8, c=3, spread=1.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (c, d))
    x = np.concatenate([centres[k] + spread * rng.normal(size=(n_per, d)) for k in range(c)])
    y = np.repeat(np.arange(c), n_per)
    return x.astype(np.float32), y


def test_fit_reaches_the_optimum_of_the_regularised_loss():
    x, y = blobs(20)
    head = heads.fit_linear(x, y, num_classes=3, l2=0.1)
    z = (x - head.mean_D) / head.scale_D
    onehot = jax.nn.one_hot(y, 3)
    grads = jax.grad(heads._loss)(
        (jnp.asarray(head.weights_DC), jnp.asarray(head.bias_C)), z, onehot, jnp.ones(60), 0.1
    )
    assert max(float(jnp.abs(g).max()) for g in grads) < 1e-3
    assert (head.probs(x).argmax(1) == y).mean() > 0.9


def test_mirrored_rows_count_as_more_labels_and_probs_average_the_views():
    x, y = blobs(10)
    mirror = x[:, ::-1].copy()
    head = heads.fit_linear(x, y, num_classes=3, l2=0.1, mirrored=mirror)
    same = heads.fit_linear(
        np.concatenate([x, mirror]), np.concatenate([y, y]), num_classes=3, l2=0.1, reference=x
    )
    np.testing.assert_allclose(head.weights_DC, same.weights_DC, atol=1e-4)
    p = head.probs(x, mirror)
    np.testing.assert_allclose(p, 0.5 * (head.probs(x) + head.probs(mirror)), rtol=1e-6)


def test_cv_prefers_strong_l2_on_noise_labels_and_weak_l2_on_separable_ones():
    x, y = blobs(30, d=20, spread=0.3)
    sep = heads.cross_validate_l2(jax.random.key(0), x, y, num_classes=3, folds=3)
    assert sep.accuracy == 1.0
    assert set(sep.accuracy_by_l2) == set(heads.L2_GRID)
    # Ties go to the larger L2 (the simpler model).
    assert sep.l2 == max(g for g, a in sep.accuracy_by_l2.items() if a == 1.0)
    noise = np.random.default_rng(1).integers(0, 3, y.size)
    cv = heads.cross_validate_l2(jax.random.key(0), x, noise, num_classes=3, folds=3)
    assert cv.accuracy < 0.6


def test_stratified_folds_deal_every_class_evenly():
    y = np.repeat(np.arange(4), [9, 6, 3, 12])
    fold = heads.stratified_folds(jax.random.key(0), y, 3)
    for c in range(4):
        counts = np.bincount(fold[y == c], minlength=3)
        assert counts.max() - counts.min() <= 1


def test_fit_head_without_enough_labels_for_cv_uses_the_middle_l2():
    x, y = blobs(1)
    head, cv = heads.fit_head(jax.random.key(0), x, y, num_classes=3)
    assert cv is None and head.l2 == sorted(heads.L2_GRID)[len(heads.L2_GRID) // 2]


def test_arrays_round_trip_and_split_views():
    x, y = blobs(5)
    head = heads.fit_linear(x, y, num_classes=3, l2=1.0)
    again = heads.LinearHead.from_arrays(head.arrays())
    np.testing.assert_array_equal(again.logits(x), head.logits(x))
    a, b = heads.split_views(np.stack([x, -x], 1))
    np.testing.assert_array_equal(a, x)
    np.testing.assert_array_equal(b, -x)
    assert heads.split_views(x)[1] is None


@pytest.mark.parametrize(
    "feats, labels, match",
    [
        (np.zeros((3, 2)), np.array([0, 1]), "need"),
        (np.array([[0.0, np.nan]]), np.array([0]), "NaN"),
        (np.zeros((2, 2)), np.array([0, 5]), "labels must be in"),
    ],
)
def test_bad_input_is_one_sentence(feats, labels, match):
    with pytest.raises(ValueError, match=match):
        heads.fit_linear(feats, labels, num_classes=3, l2=1.0)
