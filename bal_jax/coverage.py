"""Coverage selection for low budgets: ProbCover and MaxHerding on self-supervised features.

Usage::

    delta = choose_delta(key, feats_ND, num_clusters=10)          # purity rule, once per seed
    picked = probcover(key, feats_ND, labeled_N, k, delta=delta)    # delta-ball max coverage
    sigma = default_sigma(feats_ND)                                 # median 1-NN distance
    picked = maxherding(feats_ND, labeled_N, k, sigma=sigma)        # generalized coverage

Both methods greedily grow the labeled set L to maximise a coverage of the whole pool,
``C(L) = sum_j max_{l in L} a(x_j, x_l)`` (Bae, Noh and Sutherland, "Generalized Coverage for
More Robust Low-Budget Active Learning", ECCV 2024, generalized coverage and Algorithm 1):

- ProbCover (Yehuda, Dekel, Hacohen and Weinshall, "Active Learning Through a Covering Lens",
  NeurIPS 2022): the top-hat ``a = 1[||x - y|| < delta]``; C counts the points inside the union
  of the delta-balls around L. Each pick is the point whose ball holds the most points not yet
  covered (paper Algorithm 1); points in a ball of an already labeled image count as covered.
- MaxHerding (Bae et al. 2024): the Gaussian ``a = exp(-||x - y||^2 / (2 sigma^2))``.

The features are L2-normalised first (``normalize=True``), as both papers' code does.

Memory and speed: one pass over the pool in row blocks (at most ``2**20`` affinities live,
never the N x N matrix) gives every point's gain ``sum_j max(a(x, x_j) - c_j, 0)``, with c_j
the coverage of x_j by L. A pick raises c only on the points it covers better than L did (the
newly covered points of its ball; its Voronoi cell among L for the Gaussian), and only those
columns change anyone's gain: they are re-evaluated against the pool in blocks of 128 (16 for
the last few) and subtracted. ProbCover costs at most two passes over the pool (plus one
16-column block per pick); MaxHerding about ``1 + ln k`` passes (the cells shrink as L grows).
Memory is O(128 N + N D).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bal_jax.blocks import _sq_dists, as_float_matrix, check_finite, map_chunks
from bal_jax.kmeans import kmeans
from bal_jax.sampling import _check_k, _check_labeled

__all__ = [
    "DELTA_GRID",
    "ball_purity",
    "choose_delta",
    "default_sigma",
    "maxherding",
    "probcover",
    "select",
]

# Candidate radii on the unit sphere (distances lie in [0, 2]), step 0.05.
DELTA_GRID = tuple(round(0.05 * i, 2) for i in range(1, 41))
# ProbCover's pseudo-labels when the caller does not know the number of classes.
DEFAULT_CLUSTERS = 10

# Columns per block of the running gain updates: _WIDE, and _NARROW for the last few.
_WIDE = 128
_NARROW = 16
_BLOCK_ENTRIES = 1 << 20


@jax.jit
def _unit_rows(x_ND):
    norm_N = jnp.linalg.norm(x_ND, axis=1, keepdims=True)
    return x_ND / jnp.maximum(norm_N, jnp.finfo(x_ND.dtype).tiny)


def _prepare(feats_ND, normalize: bool) -> jax.Array:
    x_ND = as_float_matrix(feats_ND, "feats_ND")
    if x_ND.shape[0] == 0:
        raise ValueError("feats_ND has no rows")
    check_finite(x_ND, "feats_ND")
    return _unit_rows(x_ND) if normalize else x_ND


def _check_scale(value, name: str) -> float:
    if isinstance(value, bool) or not math.isfinite(float(value)) or float(value) <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _chunk(num_rows: int) -> int:
    """Rows per block so that a (rows, N) block holds at most _BLOCK_ENTRIES values."""
    return max(1, _BLOCK_ENTRIES // max(num_rows, 1))


# ---------------------------------------------------------------------------------------------
# Greedy coverage (shared by both methods).


def _affinity(d2, scale, kind: str):
    if kind == "ball":
        return (d2 < scale * scale).astype(d2.dtype)
    return jnp.exp(-d2 / (2.0 * scale * scale))


def _fold_columns(fn, acc, x_ND, x_sq_N, cols_M, lo, hi, width, scale, kind):
    """Folds ``fn(acc, a_NB, cols_B, valid_B)`` over blocks of `width` pool columns.

    The columns are ``cols_M[lo:hi]`` (traced bounds; `cols_M` is padded by at least `width`
    entries so that no block is clamped); ``a_NB`` holds their affinities to the whole pool.
    """

    def body(state):
        start, acc = state
        cols_B = lax.dynamic_slice_in_dim(cols_M, start, width)
        valid_B = start + jnp.arange(width) < hi
        a_NB = _affinity(_sq_dists(x_ND, x_sq_N, x_ND[cols_B], x_sq_N[cols_B]), scale, kind)
        return start + width, fn(acc, a_NB, cols_B, valid_B)

    return lax.while_loop(lambda s: s[0] < hi, body, (jnp.asarray(lo, jnp.int32), acc))[1]


def _all_gains(x_ND, x_sq_N, c_N, w_N, scale, kind):
    """``sum_j w_j max(a(x_i, x_j) - c_j, 0)`` for every i, one pass in row blocks."""

    def fn(carry, block, valid):
        x, x_sq = block
        a_cN = _affinity(_sq_dists(x, x_sq, x_ND, x_sq_N), scale, kind)
        return carry, jnp.sum(w_N[None, :] * jnp.maximum(a_cN - c_N[None, :], 0.0), axis=1)

    return map_chunks(fn, None, (x_ND, x_sq_N), _chunk(x_ND.shape[0]))[1]


@functools.partial(jax.jit, static_argnames=("k", "kind"))
def _coverage_core(key, x_ND, labeled_N, scale, w_N, cand_N, *, k, kind):
    """Greedy coverage of the pool, each point j weighted by w_j, picking among cand_N."""
    n = x_ND.shape[0]
    x_sq_N = jnp.sum(x_ND * x_ND, 1)
    pad = _WIDE + n

    def cover(c_N, a_NB, cols_B, valid_B):
        return jnp.maximum(c_N, jnp.max(jnp.where(valid_B[None, :], a_NB, 0.0), axis=1))

    labeled_M = jnp.nonzero(labeled_N, size=pad, fill_value=0)[0]
    c_N = jnp.zeros((n,), x_ND.dtype)
    c_N = _fold_columns(
        cover, c_N, x_ND, x_sq_N, labeled_M, 0, jnp.sum(labeled_N), _WIDE, scale, kind
    )
    gain_N = jnp.where(cand_N, _all_gains(x_ND, x_sq_N, c_N, w_N, scale, kind), -jnp.inf)
    # A ball pick must cover a new point; the Gaussian greedy goes on at any gain (the running
    # gains may round a little below 0).
    min_gain = 1.0 if kind == "ball" else -jnp.inf

    def body(state):
        t, picks, c_N, gain_N, _ = state
        p = jnp.argmax(gain_N)  # lowest pool index among equal gains
        ok = gain_N[p] >= min_gain

        def take(args):
            picks, c_N, gain_N = args
            a_N = _affinity(_sq_dists(x_ND[p][None], x_sq_N[p][None], x_ND, x_sq_N), scale, kind)
            c_new = jnp.maximum(c_N, a_N[0])
            # Only the points whose coverage rose change anyone's gain: p's Voronoi cell among
            # L + {p} (Gaussian), the newly covered points (ball).
            changed_M = jnp.nonzero(c_new > c_N, size=pad, fill_value=0)[0]
            m = jnp.sum(c_new > c_N)

            def drop(acc, a_NB, cols_B, valid_B):
                old = jnp.maximum(a_NB - c_N[cols_B][None, :], 0.0)
                new = jnp.maximum(a_NB - c_new[cols_B][None, :], 0.0)
                w_B = jnp.where(valid_B, w_N[cols_B], 0.0)
                return acc + jnp.sum(w_B[None, :] * (old - new), axis=1)

            wide = m - m % _WIDE
            args = (x_ND, x_sq_N, changed_M)
            d_N = _fold_columns(drop, jnp.zeros_like(c_N), *args, 0, wide, _WIDE, scale, kind)
            d_N = _fold_columns(drop, d_N, *args, wide, m, _NARROW, scale, kind)
            return picks.at[t].set(p.astype(jnp.int32)), c_new, (gain_N - d_N).at[p].set(-jnp.inf)

        picks, c_N, gain_N = lax.cond(ok, take, lambda a: a, (picks, c_N, gain_N))
        return t + ok, picks, c_N, gain_N, ~ok

    done = jnp.zeros((), bool)
    state = (jnp.zeros((), jnp.int32), jnp.full((k,), -1, jnp.int32), c_N, gain_N, done)
    num_picked, picks, _, _, _ = lax.while_loop(lambda s: (s[0] < k) & ~s[4], body, state)
    # Nothing left to cover: the remaining picks are random unlabeled images.
    taken_N = labeled_N.at[jnp.where(picks >= 0, picks, n)].set(True, mode="drop")
    _, rand_K = lax.top_k(jnp.where(taken_N, -1.0, jax.random.uniform(key, (n,))), k)
    slot_K = jnp.arange(k)
    fill_K = rand_K[jnp.clip(slot_K - num_picked, 0, k - 1)].astype(jnp.int32)
    return jnp.where(slot_K < num_picked, picks, fill_K)


def _checked(feats_ND, labeled_mask, k, normalize):
    k = _check_k(k)
    x_ND = _prepare(feats_ND, normalize)
    labeled_N = _check_labeled(labeled_mask, x_ND.shape[0])
    free = x_ND.shape[0] - int(jnp.sum(labeled_N))
    if k > free:
        raise ValueError(f"k={k} is larger than the number of unlabeled images ({free})")
    return k, x_ND, labeled_N


def probcover(
    key: jax.Array,
    feats_ND: jax.typing.ArrayLike,
    labeled_mask: jax.typing.ArrayLike,
    k: int,
    *,
    delta: float,
    normalize: bool = True,
) -> jax.Array:
    """ProbCover (Yehuda et al. 2022, Algorithm 1): greedy max coverage by delta-balls.

    The ball of x holds the points y with ``||x - y|| < delta`` (strict, as the authors' code).
    Each pick is the unlabeled point whose ball holds the most points not yet covered (ties:
    lowest pool index); its ball's points become covered. Points inside a ball of a labeled
    image are covered from the start. When every point is covered, the remaining picks are
    drawn uniformly from the unlabeled images not picked (the authors' code takes the argmax of
    all-zero degrees again, which repeats an index).

    Args:
      key: PRNG key for the random picks once everything is covered.
      feats_ND: (N, D) float self-supervised features of the pool.
      labeled_mask: (N,) bool, True where labeled.
      k: number of images to pick, at most the number unlabeled.
      delta: ball radius (e.g. from `choose_delta`), in the units of the (normalised) features.
      normalize: L2-normalise the rows first (the paper's setting).

    Returns:
      (k,) int32 distinct unlabeled pool indices, greedy picks first.
    """
    k, x_ND, labeled_N = _checked(feats_ND, labeled_mask, k, normalize)
    delta = _check_scale(delta, "delta")
    ones_N = jnp.ones(labeled_N.shape, x_ND.dtype)
    scale = jnp.asarray(delta, x_ND.dtype)
    return _coverage_core(key, x_ND, labeled_N, scale, ones_N, ~labeled_N, k=k, kind="ball")


def maxherding(
    feats_ND: jax.typing.ArrayLike,
    labeled_mask: jax.typing.ArrayLike,
    k: int,
    *,
    sigma: float,
    normalize: bool = True,
    candidates: jax.typing.ArrayLike | None = None,
    weights: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """MaxHerding (Bae et al. 2024, Algorithm 1): greedy generalized coverage.

    Adds, k times, the unlabeled point x maximising ``sum_j w_j max_{l in L + {x}} k(x_j, x_l)``
    over the whole pool, ``k(x, y) = exp(-||x - y||^2 / (2 sigma^2))``, with L starting as the
    labeled images and w_j = 1 (the paper's method) unless `weights` are given. Deterministic;
    equal gains go to the lowest pool index up to the float rounding of the running gains
    (either pick then reaches the same coverage).

    Args:
      feats_ND: (N, D) float self-supervised features of the pool.
      labeled_mask: (N,) bool, True where labeled.
      k: number of images to pick, at most the number unlabeled.
      sigma: kernel bandwidth (e.g. `default_sigma`), in the units of the (normalised) features.
      normalize: L2-normalise the rows first (as the authors' code).
      candidates: (N,) bool, the images a pick may be (default: every unlabeled one); at
        least k unlabeled candidates.
      weights: (N,) finite values >= 0, how much covering each pool image counts (default 1:
        `bal_cover` passes the model's uncertainty).

    Returns:
      (k,) int32 distinct unlabeled pool indices in greedy order.
    """
    k, x_ND, labeled_N = _checked(feats_ND, labeled_mask, k, normalize)
    sigma = _check_scale(sigma, "sigma")
    n = labeled_N.shape[0]
    cand_N = ~labeled_N
    if candidates is not None:
        cand = np.asarray(candidates)
        if cand.dtype != bool or cand.shape != (n,):
            raise ValueError(
                f"candidates must be a ({n},) bool array, got {cand.dtype} {cand.shape}"
            )
        cand_N = cand_N & jnp.asarray(cand)
        free = int(jnp.sum(cand_N))
        if free < k:
            raise ValueError(f"k={k} is more than the {free} unlabeled candidates")
    w_N = jnp.ones((n,), x_ND.dtype)
    if weights is not None:
        w_N = jnp.asarray(weights, x_ND.dtype)
        if w_N.shape != (n,) or not bool(jnp.all(jnp.isfinite(w_N) & (w_N >= 0))):
            raise ValueError(f"weights must be {n} finite values >= 0, one per pool image")
    scale = jnp.asarray(sigma, x_ND.dtype)
    return _coverage_core(jax.random.key(0), x_ND, labeled_N, scale, w_N, cand_N, k=k, kind="gauss")


# ---------------------------------------------------------------------------------------------
# Choosing delta and sigma.


@jax.jit
def _nearest_other_sq(x_ND, label_N):
    """Squared distance from each row to the nearest row with another label (inf: none)."""
    x_sq_N = jnp.sum(x_ND * x_ND, 1)

    def fn(carry, block, valid):
        x, x_sq, lab = block
        d2_cN = _sq_dists(x, x_sq, x_ND, x_sq_N)
        return carry, jnp.min(jnp.where(lab[:, None] == label_N[None, :], jnp.inf, d2_cN), 1)

    return map_chunks(fn, None, (x_ND, x_sq_N, label_N), _chunk(x_ND.shape[0]))[1]


def _as_grid(grid) -> np.ndarray:
    grid = np.asarray(grid, np.float64)
    if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
        raise ValueError("grid must be a non-empty 1-D sequence of finite radii > 0")
    return grid


def ball_purity(
    feats_ND: jax.typing.ArrayLike, labels_N: jax.typing.ArrayLike, deltas
) -> np.ndarray:
    """Purity of the delta-balls for each delta (ProbCover, Yehuda et al. 2022).

    ``purity(delta)`` is the fraction of points whose ball ``{y : ||x - y|| < delta}`` holds
    only points of their own label, i.e. whose nearest point of another label is at distance
    ``>= delta``. Uses the features as given (no normalisation).

    Args:
      feats_ND: (N, D) float features.
      labels_N: (N,) int labels (K-means pseudo-labels in `choose_delta`).
      deltas: (G,) radii > 0.

    Returns:
      (G,) float64 purities, non-increasing in delta.
    """
    x_ND = _prepare(feats_ND, normalize=False)
    labels_N = np.asarray(labels_N)
    if labels_N.shape != (x_ND.shape[0],):
        raise ValueError(f"labels_N must have shape ({x_ND.shape[0]},), got {labels_N.shape}")
    grid = _as_grid(deltas)
    d_N = np.sqrt(np.asarray(_nearest_other_sq(x_ND, jnp.asarray(labels_N)), np.float64))
    return np.mean(d_N[:, None] >= grid[None, :], axis=0)


def choose_delta(
    key: jax.Array,
    feats_ND: jax.typing.ArrayLike,
    num_clusters: int,
    *,
    alpha: float = 0.95,
    grid=DELTA_GRID,
    normalize: bool = True,
    n_init: int = 10,
) -> float:
    """ProbCover's radius: the largest delta of `grid` whose balls are alpha-pure.

    The (normalised) features are clustered by `kmeans` into ``num_clusters`` clusters, the
    number of classes in the paper; the cluster ids are pseudo-labels and `ball_purity`
    measures the balls against them (Yehuda et al. 2022: the largest delta with purity >=
    alpha = 0.95). If no delta of the grid reaches alpha, the smallest one is returned.

    Args:
      key: PRNG key of the K-means initialisation.
      feats_ND: (N, D) float self-supervised features of the pool.
      num_clusters: K, the number of classes.
      alpha: purity threshold in (0, 1].
      grid: candidate radii (default 0.05, 0.10, ..., 2.0: the unit sphere's range).
      normalize: L2-normalise the rows first (as `probcover`).
      n_init: K-means restarts.

    Returns:
      delta, a Python float from `grid`.
    """
    if isinstance(alpha, bool) or not 0.0 < float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    grid = _as_grid(grid)
    x_ND = _prepare(feats_ND, normalize)
    labels_N = kmeans(key, x_ND, num_clusters, n_init=n_init).assignments
    pure = ball_purity(x_ND, labels_N, grid) >= alpha
    return float(grid[pure].max()) if pure.any() else float(grid.min())


def default_sigma(feats_ND: jax.typing.ArrayLike, *, normalize: bool = True) -> float:
    """MaxHerding's bandwidth here: the median distance from a point to its nearest neighbour.

    Bae et al. 2024 report MaxHerding to be robust to the bandwidth and we could not confirm
    the default of their experiments, so the bandwidth follows the data: the median Euclidean
    1-NN distance of the (normalised) pool (exact duplicates, at distance 0, left out; 1.0 if
    every point is a duplicate). The kernel is then exp(-1/2) = 0.61 at the typical distance
    between neighbours and decays over a few of them: each pick covers its neighbourhood, as a
    ProbCover ball does, while the far pool still adds a little (scale-free, unlike a fixed
    sigma, when the features are not normalised).

    Args:
      feats_ND: (N, D) float self-supervised features of the pool.
      normalize: L2-normalise the rows first (as `maxherding`).

    Returns:
      sigma > 0, a Python float.
    """
    x_ND = _prepare(feats_ND, normalize)
    d2_N = np.asarray(_nearest_other_sq(x_ND, jnp.arange(x_ND.shape[0])), np.float64)
    d_N = np.sqrt(d2_N[np.isfinite(d2_N) & (d2_N > 0)])
    return float(np.median(d_N)) if d_N.size else 1.0


def select(
    method: str,
    key: jax.Array,
    feats_ND: jax.typing.ArrayLike,
    labeled_mask: jax.typing.ArrayLike,
    k: int,
    *,
    delta: float | None = None,
    sigma: float | None = None,
    num_clusters: int = DEFAULT_CLUSTERS,
) -> np.ndarray:
    """'probcover' or 'maxherding' for `bal_jax.methods.select`.

    A None `delta` / `sigma` is computed from the features (`choose_delta` with a fixed key,
    `default_sigma`): the same value every cycle of a seed.

    ProbCover's equal degrees are broken at random here (drawn from `key`; the authors' code
    notes that the paper randomises the pick): with a small delta every uncovered point's
    ball holds only itself, and `probcover`'s lowest-index rule would then label the pool in
    file order, which on a pool stored class by class is one class at a time (measured on
    CIFAR-10 patch features: 200 images of one class per cycle, accuracy falling from 47 to
    34 %).
    """
    if feats_ND is None:
        raise ValueError(f"{method} selects on the pretext features; none were given")
    if method == "probcover":
        if delta is None:
            delta = choose_delta(jax.random.key(0), feats_ND, num_clusters)
        feats_ND, labeled = np.asarray(feats_ND), np.asarray(labeled_mask)
        order = np.asarray(jax.random.permutation(jax.random.fold_in(key, 1), len(feats_ND)))
        picked = probcover(key, feats_ND[order], labeled[order], k, delta=delta)
        return order[np.asarray(picked)]
    if method == "maxherding":
        sigma = default_sigma(feats_ND) if sigma is None else sigma
        return np.asarray(maxherding(feats_ND, labeled_mask, k, sigma=sigma))
    raise ValueError(f"unknown coverage method {method!r}")
