"""K-means and the cluster distance difference (CDD) in jax.numpy (SPEC Step 2).

Usage::

    result = kmeans(jax.random.key(0), feats_ND, 10, chunk_size=65_536)
    cdd_N = cdd(feats_ND, result.centers, chunk_size=65_536)      # d2 - d1, paper Sec. 3.2
    order_N = cdd_order(feats_ND, result.centers, chunk_size=65_536)  # S, ascending, stable

`kmeans` runs the greedy k-means++ initialisation of scikit-learn (2 + ln K local trials per
center; the default of `sklearn.cluster.KMeans`, which the released BAL code called) and then
Lloyd iterations in a `lax.while_loop` with scikit-learn's stopping rule. On pools of more than
``seeding_size(K) = max(INIT_SIZE, 64 K)`` rows (32,768 for K <= 512) the seeding runs on that
many rows drawn uniformly (as faiss trains on a sample of at most 256 rows per center and
scikit-learn's `MiniBatchKMeans` seeds on `init_size` rows): its K sequential passes over the
seeded rows are memory-bound, and over all of a 1M x 512 pool (K = 200) they took longer than
the 20 Lloyd iterations. The Lloyd iterations always see every row. Distances are
``||x||^2 - 2 x.c + ||c||^2`` so the work lands on the matrix unit.

Memory and speed: the pool is visited in blocks (`bal_jax.blocks.map_chunks`), so apart from
the (N, D) input only O(block * K + N + K * D) is live (the (N, K) distance matrix never
exists).

The public functions validate their inputs in Python (shapes, dtypes, ranges and, when the
arrays are concrete, finiteness) and call a jitted core. They can themselves be traced by an
outer `jax.jit` (make `num_clusters`, `max_iters` and `chunk_size` static); the value checks
are skipped there and NaN features then give a NaN inertia instead of a ValueError.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from bal_jax.blocks import (
    _HIGHEST,
    _sq_dists,
    as_float_matrix,
    check_chunk_size,
    check_finite,
    map_chunks,
    sample_proportional,
)
from bal_jax.blocks import pairwise_sq_dists as pairwise_sq_dists

__all__ = [
    "KMeansResult",
    "cdd",
    "cdd_order",
    "kmeans",
    "pairwise_sq_dists",
]

# Fewest rows the k-means++ seeding visits when it samples (`seeding_size`).
INIT_SIZE = 32_768


def seeding_size(num_clusters: int) -> int:
    """Most rows the k-means++ seeding of `num_clusters` centers visits: max(INIT_SIZE, 64 K)."""
    return max(INIT_SIZE, 64 * num_clusters)


class KMeansResult(NamedTuple):
    """Output of `kmeans`.

    Attributes:
      centers: (K, D) float cluster centers.
      assignments: (N,) int32 index of the nearest center of each point (for the final
        centers, so `inertia` and `assignments` agree).
      inertia: () float sum over points of the squared distance to their nearest center.
      num_iters: () int32 number of Lloyd iterations run (0 with ``max_iters=0``: the
        k-means++ centers themselves).
    """

    centers: jax.Array
    assignments: jax.Array
    inertia: jax.Array
    num_iters: jax.Array


# ---------------------------------------------------------------------------------------------
# K-means.


def _kmeans_plus_plus(key, x_ND, x_sq_N, w_N, num_clusters):
    """Greedy k-means++ (Arthur & Vassilvitskii 2007; scikit-learn's `_kmeans_plusplus`)."""
    num_trials = 2 + int(math.log(num_clusters))
    key_first, key_loop = jax.random.split(key)
    first = sample_proportional(key_first, w_N, 1, w_N)[0]

    def dists_to(idx_T):
        # Unblocked: the (N, T) result is small and blocking here measured 1.5x slower
        # (200,000 x 512, K=200: 12.3 s unblocked vs 18.2 s in blocks of 8,192).
        return _sq_dists(x_ND, x_sq_N, x_ND[idx_T], x_sq_N[idx_T])

    closest_N = dists_to(first[None])[:, 0] * w_N
    centers_KD = jnp.zeros((num_clusters, x_ND.shape[1]), x_ND.dtype).at[0].set(x_ND[first])

    def body(c, state):
        centers_KD, closest_N = state
        cand_T = sample_proportional(jax.random.fold_in(key_loop, c), closest_N, num_trials, w_N)
        new_NT = jnp.minimum(closest_N[:, None], dists_to(cand_T) * w_N[:, None])
        best = jnp.argmin(jnp.sum(new_NT, axis=0))
        return centers_KD.at[c].set(x_ND[cand_T[best]]), new_NT[:, best]

    centers_KD, _ = lax.fori_loop(1, num_clusters, body, (centers_KD, closest_N))
    return centers_KD


def _seeding_rows(key, x_ND, x_sq_N, w_N, size):
    """`size` distinct rows drawn uniformly among those of positive weight (all of them, then
    rows of weight 0, when fewer have a positive weight)."""
    u_N = jax.random.uniform(key, w_N.shape, x_ND.dtype)
    _, idx_S = lax.top_k(jnp.where(w_N > 0, u_N, -1.0), size)
    return x_ND[idx_S], x_sq_N[idx_S], w_N[idx_S]


def _nearest(x_cD, x_sq_c, centers_KD, c_sq_K):
    """Index and squared distance of each row's nearest center (the lowest index on ties).

    The index minimises ``||c||^2 - 2 x.c`` (``||x||^2`` is the same for every center, so it
    is added to the minimum only), taken as the lowest column attaining the row minimum:
    XLA:CPU's argmin is a two-operand reduction several times slower than a min, and it kept
    the Lloyd step far above the matmul's time (benchmarks/results_kmeans.md).
    """
    s_cK = c_sq_K[None, :] - 2.0 * jnp.dot(x_cD, centers_KD.T, precision=_HIGHEST)
    min_c1 = jnp.min(s_cK, axis=1, keepdims=True)
    col_cK = lax.broadcasted_iota(jnp.int32, s_cK.shape, 1)
    assign_c = jnp.min(jnp.where(s_cK == min_c1, col_cK, s_cK.shape[1]), axis=1)
    return assign_c, jnp.maximum(min_c1[:, 0] + x_sq_c, 0.0)


def _e_step(x_ND, x_sq_N, w_N, centers_KD, chunk_size):
    """Nearest center of every point, plus the per-cluster sums the M-step needs."""
    num_clusters, dim = centers_KD.shape
    c_sq_K = jnp.sum(centers_KD * centers_KD, 1)

    def fn(carry, block, valid):
        sums_KD, counts_K, inertia = carry
        x, x_sq, w = block
        assign_c, dmin_c = _nearest(x, x_sq, centers_KD, c_sq_K)
        wv_c = jnp.where(valid, w, 0.0)
        # segment_sum is a scatter-add: one pass over x, no (c, K) one-hot matmul.
        sums_KD += jax.ops.segment_sum(x * wv_c[:, None], assign_c, num_clusters)
        counts_K += jax.ops.segment_sum(wv_c, assign_c, num_clusters)
        inertia += jnp.sum(dmin_c * wv_c)
        return (sums_KD, counts_K, inertia), (assign_c, dmin_c)

    init = (
        jnp.zeros((num_clusters, dim), x_ND.dtype),
        jnp.zeros((num_clusters,), x_ND.dtype),
        jnp.zeros((), x_ND.dtype),
    )
    (sums_KD, counts_K, inertia), (assign_N, dmin_N) = map_chunks(
        fn, init, (x_ND, x_sq_N, w_N), chunk_size
    )
    return assign_N, dmin_N, sums_KD, counts_K, inertia


def _weighted_mean_variance(x_ND, w_N, chunk_size):
    """Mean over features of the per-feature variance (scikit-learn's tolerance scale)."""
    total = jnp.sum(w_N)

    def sum_fn(carry, block, valid):
        x, w = block
        return carry + jnp.sum(x * jnp.where(valid, w, 0.0)[:, None], 0), None

    mean_D = map_chunks(sum_fn, jnp.zeros(x_ND.shape[1], x_ND.dtype), (x_ND, w_N), chunk_size)[0]
    mean_D = mean_D / total

    def var_fn(carry, block, valid):
        x, w = block
        dev = (x - mean_D[None, :]) ** 2
        return carry + jnp.sum(dev * jnp.where(valid, w, 0.0)[:, None]), None

    ss = map_chunks(var_fn, jnp.zeros((), x_ND.dtype), (x_ND, w_N), chunk_size)[0]
    return ss / (total * x_ND.shape[1])


@functools.partial(jax.jit, static_argnames=("num_clusters", "chunk_size", "init_size"))
def kmeans_core(
    key: jax.Array,
    x_ND: jax.Array,
    mask_N: jax.Array,
    tol: jax.Array,
    max_iters: jax.Array,
    *,
    num_clusters: int,
    chunk_size: int | None,
    init_size: int | None = None,
) -> KMeansResult:
    """Jitted k-means on the points where `mask_N` is True (others get assignments only).

    No validation: callers guarantee 1 <= num_clusters <= mask_N.sum() and finite x_ND.
    `tol` and `max_iters` are traced (changing them does not recompile).
    """
    w_N = mask_N.astype(x_ND.dtype)
    x_sq_N = jnp.sum(x_ND * x_ND, axis=1)
    # The tolerance's scale costs two passes over the pool: skipped when tol is 0.
    tol_abs = lax.cond(
        tol > 0,
        lambda: tol * _weighted_mean_variance(x_ND, w_N, chunk_size),
        lambda: jnp.zeros((), x_ND.dtype),
    )
    seed_rows = (x_ND, x_sq_N, w_N)
    init_size = seeding_size(num_clusters) if init_size is None else init_size
    if x_ND.shape[0] > init_size:
        seed_rows = _seeding_rows(jax.random.fold_in(key, 1), *seed_rows, init_size)
    centers_KD = _kmeans_plus_plus(key, *seed_rows, num_clusters)

    def cond(state):
        i, _, _, done = state
        return (i < max_iters) & ~done

    def body(state):
        i, centers_KD, prev_assign_N, _ = state
        assign_N, dmin_N, sums_KD, counts_K, _ = _e_step(x_ND, x_sq_N, w_N, centers_KD, chunk_size)
        # Empty clusters get the points farthest from their centers (distinct points, the
        # farthest to the lowest empty cluster id), as scikit-learn does: never a NaN mean.
        empty_K = counts_K == 0
        _, far_K = lax.top_k(jnp.where(mask_N, dmin_N, -jnp.inf), num_clusters)
        rank_K = jnp.cumsum(empty_K) - 1
        reseed_KD = x_ND[far_K[jnp.clip(rank_K, 0, num_clusters - 1)]]
        means_KD = sums_KD / jnp.maximum(counts_K, 1.0)[:, None]
        new_KD = jnp.where(empty_K[:, None], reseed_KD, means_KD)
        shift = jnp.sum((new_KD - centers_KD) ** 2)
        unchanged = jnp.all((assign_N == prev_assign_N) | ~mask_N)
        return i + 1, new_KD, assign_N, unchanged | (shift <= tol_abs)

    init = (
        jnp.zeros((), jnp.int32),
        centers_KD,
        jnp.full(x_ND.shape[:1], -1, jnp.int32),
        jnp.zeros((), bool),
    )
    num_iters, centers_KD, _, _ = lax.while_loop(cond, body, init)
    assign_N, _, _, _, inertia = _e_step(x_ND, x_sq_N, w_N, centers_KD, chunk_size)
    return KMeansResult(centers_KD, assign_N, inertia, num_iters)


def _check_int(value: Any, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or int(value) != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be in {bounds}, got {value}")
    return value


def kmeans(
    key: jax.Array,
    x: jax.typing.ArrayLike,
    num_clusters: int,
    *,
    max_iters: int = 300,
    tol: float = 1e-4,
    chunk_size: int | None = None,
    n_init: int = 10,
    init_size: int | None = None,
) -> KMeansResult:
    """K-means with greedy k-means++ initialisation and Lloyd iterations (SPEC Step 2).

    Runs `n_init` independent starts (vectorised with `jax.vmap`, one k-means++ draw each)
    and keeps the one of lowest inertia, as scikit-learn's ``KMeans(n_init=10)`` (its default
    before 1.4, which the released BAL code called). A single start lands in a clearly worse
    local optimum now and then even on well separated data; ten starts make that rare.

    Initialisation: the first center is a uniformly drawn point; each further center is the
    best (lowest resulting inertia) of ``2 + floor(ln K)`` points drawn with probability
    proportional to the squared distance to the centers so far (scikit-learn's greedy
    k-means++), over all points, or over `init_size` of them drawn uniformly when N is larger.
    Lloyd iterations stop, as scikit-learn's, after `max_iters` iterations, when
    no assignment changed, or when the squared Frobenius norm of the center shift is at most
    ``tol * mean(var(x, axis=0))``. An empty cluster's center moves to the point farthest
    from its own center. Objective: ``sum_n min_k ||x_n - c_k||^2``.

    Args:
      key: PRNG key for the initialisation (same key, same result).
      x: (N, D) float points, finite.
      num_clusters: K, in [1, N].
      max_iters: maximum number of Lloyd iterations (>= 0; 0 returns the k-means++ centers).
      tol: relative tolerance on the center shift (>= 0).
      chunk_size: most rows per distance block (None: `bal_jax.blocks.BLOCK_ROWS`).
      n_init: independent starts (>= 1). Start i uses ``jax.random.split(key, n_init)[i]``;
        with ``n_init=1`` the key itself, so one start reproduces earlier single-start runs.
      init_size: most rows the k-means++ seeding visits (>= num_clusters; None:
        `seeding_size(num_clusters)`): larger pools are seeded on that many rows drawn
        uniformly.

    Returns:
      KMeansResult(centers (K, D), assignments (N,) int32, inertia (), num_iters () int32)
      of the start with the lowest inertia (the first such start on ties).

    Raises:
      ValueError: x not 2-D float, NaN/inf in a concrete x, num_clusters outside [1, N],
        bad max_iters/tol/chunk_size/n_init/init_size.
    """
    x_ND = as_float_matrix(x, "x")
    num_points = x_ND.shape[0]
    if num_points == 0:
        raise ValueError("x has no rows")
    num_clusters = _check_int(num_clusters, "num_clusters", 1, num_points)
    max_iters = _check_int(max_iters, "max_iters", 0)
    if not math.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    chunk_size = check_chunk_size(chunk_size)
    n_init = _check_int(n_init, "n_init", 1)
    if init_size is not None:
        init_size = _check_int(init_size, "init_size", num_clusters)
    check_finite(x_ND, "x")
    args = (
        x_ND,
        jnp.ones((num_points,), bool),
        jnp.asarray(tol, x_ND.dtype),
        jnp.asarray(max_iters, jnp.int32),
    )
    static = dict(num_clusters=num_clusters, chunk_size=chunk_size, init_size=init_size)
    if n_init == 1:
        return kmeans_core(key, *args, **static)
    return _best_of_starts(jax.random.split(key, n_init), *args, **static)


@functools.partial(jax.jit, static_argnames=("num_clusters", "chunk_size", "init_size"))
def _best_of_starts(keys, x_ND, mask_N, tol, max_iters, **static):
    """`kmeans_core` from every key at once (vmap); the result of lowest inertia."""
    runs = jax.vmap(lambda k: kmeans_core(k, x_ND, mask_N, tol, max_iters, **static))(keys)
    best = jnp.argmin(runs.inertia)
    return jax.tree.map(lambda a: a[best], runs)


# ---------------------------------------------------------------------------------------------
# Cluster distance difference.


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _cdd_core(x_ND, centers_KD, *, chunk_size):
    x_sq_N = jnp.sum(x_ND * x_ND, 1)
    c_sq_K = jnp.sum(centers_KD * centers_KD, 1)

    def fn(carry, block, valid):
        x, x_sq = block
        neg_top_c2, _ = lax.top_k(-_sq_dists(x, x_sq, centers_KD, c_sq_K), 2)
        d_c2 = jnp.sqrt(jnp.maximum(-neg_top_c2, 0.0))
        return carry, d_c2[:, 1] - d_c2[:, 0]

    return map_chunks(fn, None, (x_ND, x_sq_N), chunk_size)[1]


def _validated_cdd_inputs(x, centers, chunk_size):
    x_ND = as_float_matrix(x, "x")
    centers_KD = as_float_matrix(centers, "centers")
    if centers_KD.shape[1] != x_ND.shape[1]:
        raise ValueError(f"x has {x_ND.shape[1]} features but centers have {centers_KD.shape[1]}")
    if centers_KD.shape[0] < 2:
        raise ValueError(f"CDD needs at least 2 centers, got {centers_KD.shape[0]}")
    if x_ND.shape[0] == 0:
        raise ValueError("x has no rows")
    check_finite(x_ND, "x")
    check_finite(centers_KD, "centers")
    dtype = jnp.promote_types(x_ND.dtype, centers_KD.dtype)
    return x_ND.astype(dtype), centers_KD.astype(dtype), check_chunk_size(chunk_size)


def cdd(
    x: jax.typing.ArrayLike, centers: jax.typing.ArrayLike, *, chunk_size: int | None = None
) -> jax.Array:
    """Cluster distance difference ``CDD(x) = d_2 - d_1`` (paper Sec. 3.2, SPEC Step 2).

    ``d_1 <= d_2`` are the Euclidean (not squared) distances from x to its nearest and
    second-nearest centers, found with `lax.top_k`. CDD = 0 on the boundary between two
    clusters (the hardest images); large CDD = deep inside a cluster.

    Args:
      x: (N, D) float points, finite.
      centers: (K, D) float centers, K >= 2.
      chunk_size: most rows per distance block (None: `bal_jax.blocks.BLOCK_ROWS`).

    Returns:
      (N,) float CDD values, >= 0.
    """
    x_ND, centers_KD, chunk_size = _validated_cdd_inputs(x, centers, chunk_size)
    return _cdd_core(x_ND, centers_KD, chunk_size=chunk_size)


def cdd_order(
    x: jax.typing.ArrayLike, centers: jax.typing.ArrayLike, *, chunk_size: int | None = None
) -> jax.Array:
    """The pool sorted by ascending CDD: the paper's S (SPEC Step 2).

    Args:
      x: (N, D) float points, finite.
      centers: (K, D) float centers, K >= 2.
      chunk_size: rows per distance block.

    Returns:
      (N,) int32 permutation; ``S[j] = x[order[j]]``. Stable: equal CDD keep index order.
    """
    return jnp.argsort(cdd(x, centers, chunk_size=chunk_size), stable=True).astype(jnp.int32)
