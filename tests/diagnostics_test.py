"""Feature-quality diagnostics against NumPy / scikit-learn references."""

import jax
import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from bal_jax import diagnostics


def _reference_knn(x, y, k, metric):
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    nn = np.argsort(d2, axis=1, kind="stable")[:, :k]
    votes = np.stack([np.bincount(y[row], minlength=y.max() + 1) for row in nn])
    return float(np.mean(votes.argmax(1) == y))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("k", [1, 4, 7])
def test_knn_accuracy_matches_numpy_reference(metric, k):
    rng = np.random.default_rng(k)
    y = rng.integers(0, 3, 90)
    x = rng.normal(size=(90, 5)) + y[:, None] * 0.8
    got = diagnostics.knn_accuracy(x, y, k=k, metric=metric, block=32)
    assert got == pytest.approx(_reference_knn(x, y, k, metric))


def test_knn_accuracy_matches_scikit_learn_leave_one_out():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 60)
    x = rng.normal(size=(60, 6)) + y[:, None]
    pred = []
    for i in range(60):
        keep = np.arange(60) != i
        clf = KNeighborsClassifier(n_neighbors=5).fit(x[keep], y[keep])
        pred.append(clf.predict(x[i : i + 1])[0])
    want = float(np.mean(np.asarray(pred) == y))
    assert diagnostics.knn_accuracy(x, y, k=5, metric="euclidean") == pytest.approx(want)


def test_knn_accuracy_separable_and_bad_input():
    y = np.repeat([0, 1], 20)
    x = np.concatenate([np.ones((20, 2)), -np.ones((20, 2))]) + 0.01 * np.arange(40)[:, None]
    assert diagnostics.knn_accuracy(x, y, k=3) == 1.0
    with pytest.raises(ValueError, match="k must be"):
        diagnostics.knn_accuracy(x, y, k=40)
    with pytest.raises(ValueError, match="metric"):
        diagnostics.knn_accuracy(x, y, metric="manhattan")
    with pytest.raises(ValueError, match="labels_N"):
        diagnostics.knn_accuracy(x, y[:-1])


def test_purity_and_kmeans_purity():
    y = np.array([0, 0, 1, 1, 1, 2])
    c = np.array([5, 5, 5, 7, 7, 7])
    assert diagnostics.purity(y, c) == pytest.approx(4 / 6)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    x = rng.normal(size=(90, 2)) * 0.1 + np.eye(3)[y][:, :2] * 10
    assert diagnostics.kmeans_purity(jax.random.key(0), x, y, num_clusters=3) == 1.0


def test_pooled_pixels():
    x = np.arange(2 * 32 * 32 * 3, dtype=np.int64).reshape(2, 32, 32, 3) % 256
    out = diagnostics.pooled_pixels(x.astype(np.uint8), size=8)
    want = (x.astype(np.float32) / 255).reshape(2, 8, 4, 8, 4, 3).mean((2, 4)).reshape(2, -1)
    np.testing.assert_allclose(out, want, rtol=1e-6)
