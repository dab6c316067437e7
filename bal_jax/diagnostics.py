"""Feature quality: how well do (pretext) features know the classes? Labels used to measure only.

Usage::

  acc = knn_accuracy(feats_ND, labels_N, k=20)                 # leave-one-out 20-NN, cosine
  p = kmeans_purity(key, feats_ND, labels_N, num_clusters=10)  # BAL's own K-means

BAL's whole signal is the K-means geometry of the pretext features (SPEC Step 2). Two numbers
say whether that geometry follows the classes: the leave-one-out k-nearest-neighbour accuracy
(each image votes with its k nearest other images) and the purity of the K-means clusters (the
share of images whose cluster's majority class is their own). The runner measures the kNN
accuracy on the labeled validation split only, so no pool label is ever looked at.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bal_jax.blocks import as_float_matrix, check_finite
from bal_jax.kmeans import kmeans

METRICS = ("cosine", "euclidean")


@functools.partial(jax.jit, static_argnames=("k", "num_classes", "metric", "block"))
def _knn_votes(x_ND, labels_N, *, k, num_classes, metric, block):
    n = x_ND.shape[0]
    if metric == "cosine":
        x_ND = x_ND / jnp.maximum(jnp.linalg.norm(x_ND, axis=1, keepdims=True), 1e-12)
    sq_N = jnp.sum(x_ND * x_ND, axis=1)
    pad = -n % block
    xb = jnp.pad(x_ND, ((0, pad), (0, 0))).reshape(-1, block, x_ND.shape[1])
    rows = jnp.arange(n + pad).reshape(-1, block)

    def one(args):
        xb_BD, rows_B = args
        d2 = (
            jnp.sum(xb_BD * xb_BD, 1)[:, None]
            + sq_N[None, :]
            - 2.0 * jnp.einsum("bd,nd->bn", xb_BD, x_ND, precision=jax.lax.Precision.HIGHEST)
        )
        d2 = jnp.where(rows_B[:, None] == jnp.arange(n)[None, :], jnp.inf, d2)  # leave one out
        _, nn_BK = jax.lax.top_k(-d2, k)
        # Majority vote; ties go to the lowest class index (scikit-learn's KNeighborsClassifier).
        votes = jnp.sum(jax.nn.one_hot(labels_N[nn_BK], num_classes), axis=1)
        return jnp.argmax(votes, axis=-1)

    pred = jax.lax.map(one, (xb, rows)).reshape(-1)[:n]
    return pred


def knn_accuracy(
    feats_ND: jax.typing.ArrayLike,
    labels_N: jax.typing.ArrayLike,
    *,
    k: int = 20,
    metric: str = "cosine",
    block: int = 512,
) -> float:
    """Leave-one-out k-nearest-neighbour accuracy of features against labels.

    Each image is predicted by the majority class of its ``k`` nearest other images (ties
    between classes: the lowest class index, as scikit-learn's ``KNeighborsClassifier``).

    Args:
      feats_ND: (N, D) features, N > k.
      labels_N: (N,) integer labels >= 0.
      k: neighbours per vote.
      metric: 'cosine' (features L2-normalised first) or 'euclidean'.
      block: query rows per distance block (memory: block x N floats).

    Returns:
      Accuracy in [0, 1].
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    x = as_float_matrix(feats_ND, "feats_ND")
    labels = np.asarray(labels_N)
    n = x.shape[0]
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels_N must be ({n},) integers, got {labels.dtype} {labels.shape}")
    if labels.min() < 0:
        raise ValueError("labels_N must be >= 0")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k < n:
        raise ValueError(f"k must be an integer in [1, {n - 1}] for {n} images, got {k!r}")
    check_finite(x, "feats_ND")
    pred = _knn_votes(
        jnp.asarray(x, jnp.float32),
        jnp.asarray(labels, jnp.int32),
        k=int(k),
        num_classes=int(labels.max()) + 1,
        metric=metric,
        block=int(min(block, n)),
    )
    return float(np.mean(np.asarray(pred) == labels))


def _contingency(labels_N, clusters_N) -> np.ndarray:
    labels_N, clusters_N = np.asarray(labels_N), np.asarray(clusters_N)
    if labels_N.shape != clusters_N.shape or labels_N.ndim != 1 or labels_N.size == 0:
        raise ValueError("labels and clusters must be non-empty 1-D arrays of one length")
    _, y = np.unique(labels_N, return_inverse=True)
    _, c = np.unique(clusters_N, return_inverse=True)
    table = np.zeros((y.max() + 1, c.max() + 1))
    np.add.at(table, (y, c), 1)
    return table


def purity(labels_N: jax.typing.ArrayLike, clusters_N: jax.typing.ArrayLike) -> float:
    """Share of images whose cluster's majority class is their own class.

    Args:
      labels_N: (N,) class labels.
      clusters_N: (N,) cluster assignments.

    Returns:
      Purity in [0, 1].
    """
    table = _contingency(labels_N, clusters_N)
    return float(table.max(axis=0).sum() / table.sum())


def nmi(labels_N: jax.typing.ArrayLike, clusters_N: jax.typing.ArrayLike) -> float:
    """Normalised mutual information, arithmetic normalisation (scikit-learn's default).

    Args:
      labels_N: (N,) class labels.
      clusters_N: (N,) cluster assignments.

    Returns:
      NMI in [0, 1].
    """
    p = _contingency(labels_N, clusters_N)
    p = p / p.sum()
    py, pc = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float(np.sum(p[nz] * np.log(p[nz] / np.outer(py, pc)[nz])))
    h = [-float(np.sum(q[q > 0] * np.log(q[q > 0]))) for q in (py, pc)]
    return 1.0 if sum(h) == 0 else mi / (0.5 * sum(h))


def kmeans_purity(
    key: jax.Array,
    feats_ND: jax.typing.ArrayLike,
    labels_N: jax.typing.ArrayLike,
    *,
    num_clusters: int,
) -> float:
    """Purity of BAL's K-means clusters of the features (SPEC Step 2's clustering).

    Args:
      key: PRNG key of the K-means++ initialisation.
      feats_ND: (N, D) features.
      labels_N: (N,) class labels.
      num_clusters: K.

    Returns:
      Purity in [0, 1].
    """
    assign = np.asarray(kmeans(key, feats_ND, num_clusters).assignments)
    return purity(labels_N, assign)


def pooled_pixels(images_NHWC_u8: np.ndarray, *, size: int = 8, mean=None, std=None) -> np.ndarray:
    """Raw-pixel reference features: images average-pooled to ``size x size``, flattened.

    Args:
      images_NHWC_u8: (N, H, W, C) uint8 images, H and W multiples of ``size``.
      size: output side.
      mean, std: optional per-channel normalisation in [0, 1] units.

    Returns:
      (N, size * size * C) float32.
    """
    x = np.asarray(images_NHWC_u8, np.float32) / 255.0
    n, h, w, c = x.shape
    if h % size or w % size:
        raise ValueError(f"{h}x{w} images do not pool evenly to {size}x{size}")
    if mean is not None:
        x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    x = x.reshape(n, size, h // size, size, w // size, c).mean(axis=(2, 4))
    return x.reshape(n, -1)
