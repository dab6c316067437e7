"""Feature-based samplers: Core-Set, BADGE, k-means centres and TypiClust.

Usage::

    picked = kcenter_greedy(feats_ND, labeled_N, ~labeled_N, k)     # Core-Set baseline
    picked = badge(key, probs_NC, feats_ND, ~labeled_N, k)          # BADGE baseline
    picked = typiclust(key, feats_ND, labeled_N, ~labeled_N, k)     # TypiClust

They follow the conventions of `bal_jax.sampling` (candidates as indices or a mask, k distinct
pool indices best first, validation in Python, jitted cores) and share its input checks.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bal_jax.blocks import (
    _sq_dists,
    as_float_matrix,
    check_chunk_size,
    check_finite,
    is_tracer,
    map_chunks,
    sample_proportional,
)
from bal_jax.kmeans import kmeans, kmeans_core
from bal_jax.sampling import (
    _HIGHEST,
    _as_probs,
    _candidate_mask,
    _check_disjoint,
    _check_k,
    _check_labeled,
)

__all__ = ["badge", "kcenter_greedy", "kmeans_centers", "typiclust"]


def _min_sq_dist_update(x_ND, x_sq_N, m_N, y_GD, valid_G, chunk_size):
    """``min(m, min_g ||x - y_g||^2)`` over the valid rows of y, one pass over x."""
    y_sq_G = jnp.sum(y_GD * y_GD, 1)

    def fn(carry, block, valid):
        x, x_sq, m = block
        d_cG = jnp.where(valid_G[None, :], _sq_dists(x, x_sq, y_GD, y_sq_G), jnp.inf)
        return carry, jnp.minimum(m, jnp.min(d_cG, axis=1))

    return map_chunks(fn, None, (x_ND, x_sq_N, m_N), chunk_size)[1]


@functools.partial(jax.jit, static_argnames=("k", "chunk_size"))
def _kmeans_centers_core(key, x_ND, mask_N, tol, max_iters, *, k, chunk_size):
    centers_KD = kmeans_core(
        key, x_ND, mask_N, tol, max_iters, num_clusters=k, chunk_size=chunk_size
    ).centers
    block = min(64, k)
    num_blocks = -(-k // block)
    centers_KD = jnp.pad(centers_KD, ((0, num_blocks * block - k), (0, 0)))
    x_sq_N = jnp.sum(x_ND * x_ND, 1)

    def block_body(b, state):
        c_BD = lax.dynamic_slice_in_dim(centers_KD, b * block, block)
        d_NB = _sq_dists(x_ND, x_sq_N, c_BD, jnp.sum(c_BD * c_BD, 1))

        def pick(j, state):
            taken_N, picks = state
            col_N = jnp.where(mask_N & ~taken_N, d_NB[:, j], jnp.inf)
            i = jnp.argmin(col_N)
            ok = (b * block + j < k) & (col_N[i] < jnp.inf)
            return taken_N.at[i].set(taken_N[i] | ok), picks.at[b * block + j].set(
                jnp.where(ok, i, -1)
            )

        return lax.fori_loop(0, block, pick, state)

    init = (jnp.zeros_like(mask_N), jnp.full((num_blocks * block,), -1, jnp.int32))
    _, picks = lax.fori_loop(0, num_blocks, block_body, init)
    return picks[:k]


def kmeans_centers(
    key: jax.Array,
    feats_ND: jax.typing.ArrayLike,
    candidates: jax.typing.ArrayLike,
    k: int,
    *,
    max_iters: int = 300,
    tol: float = 1e-4,
    chunk_size: int | None = None,
) -> jax.Array:
    """K-means with k clusters on the candidates, then the closest image to each center.

    The paper's K-means sampling ablation (Sec. 5.4). Centers are visited in order; each
    takes its nearest candidate not taken by an earlier center, so the k images are
    distinct.

    Args:
      key: PRNG key for the k-means++ initialisation.
      feats_ND: (N, D) float features of the pool.
      candidates: index array or (N,) bool mask of the images that may be picked.
      k: number of images (and clusters).
      max_iters, tol, chunk_size: as in `bal_jax.kmeans.kmeans`.

    Returns:
      (k,) int32 distinct pool indices, one per center.
    """
    k = _check_k(k)
    x_ND = as_float_matrix(feats_ND, "feats_ND")
    mask_N = _candidate_mask(candidates, x_ND.shape[0], k)
    check_finite(x_ND, "feats_ND")
    if not math.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    if isinstance(max_iters, bool) or int(max_iters) != max_iters or max_iters < 0:
        raise ValueError(f"max_iters must be an integer >= 0, got {max_iters!r}")
    return _kmeans_centers_core(
        key,
        x_ND,
        mask_N,
        jnp.asarray(tol, x_ND.dtype),
        jnp.asarray(max_iters, jnp.int32),
        k=k,
        chunk_size=check_chunk_size(chunk_size),
    )


# Greedy k-center in batches. Each batch takes the _KC_TOP points with the largest distance
# to the chosen set and replays the greedy rule on them with their exact pairwise distances.
# A point of that shortlist whose updated distance still beats the (_KC_TOP+1)-th largest
# distance is provably the global greedy pick (distances only shrink), so up to _KC_GROUP
# picks cost one pass over the pool instead of one each: the same picks as the one-at-a-time
# algorithm (up to float rounding of the distances) at ~1/_KC_GROUP of the memory traffic.
# A batch that accepted at most _KC_SMALL_GROUP picks updates the distances with that many
# columns, so data where few shortlist points qualify pay no more than before. On 200,000 x
# 512 Gaussian points, 1,000 labeled, k=1,000 (2-core CPU, another job running): group 16 /
# shortlist 256 12.1 s, 64 / 512 5.9 s, 128 / 1,024 4.9 s, 256 / 2,048 5.2 s.
_KC_TOP = 1024
_KC_GROUP = 128
_KC_SMALL_GROUP = 16
_KC_LABELED_BLOCK = 128


@functools.partial(jax.jit, static_argnames=("k", "chunk_size"))
def _kcenter_core(x_ND, labeled_N, cand_N, *, k, chunk_size):
    n = x_ND.shape[0]
    x_sq_N = jnp.sum(x_ND * x_ND, 1)
    inf_N = jnp.full((n,), jnp.inf, x_ND.dtype)

    # Distance to the labeled set, _KC_LABELED_BLOCK labeled points per pass.
    lb = min(_KC_LABELED_BLOCK, n)
    num_labeled = jnp.sum(labeled_N)
    labeled_idx = jnp.nonzero(labeled_N, size=-(-n // lb) * lb, fill_value=0)[0]

    def labeled_body(state):
        b, m_N = state
        idx = lax.dynamic_slice_in_dim(labeled_idx, b * lb, lb)
        valid = b * lb + jnp.arange(lb) < num_labeled
        return b + 1, _min_sq_dist_update(x_ND, x_sq_N, m_N, x_ND[idx], valid, chunk_size)

    _, m_N = lax.while_loop(lambda s: s[0] * lb < num_labeled, labeled_body, (0, inf_N))

    # Nothing labeled: start from the candidate nearest the candidates' mean.
    avail_N = cand_N & ~labeled_N
    w_N = avail_N.astype(x_ND.dtype)
    mean_D = jnp.dot(w_N, x_ND, precision=_HIGHEST) / jnp.maximum(jnp.sum(w_N), 1.0)
    d_mean_N = x_sq_N - 2.0 * jnp.dot(x_ND, mean_D, precision=_HIGHEST)
    first = jnp.argmin(jnp.where(avail_N, d_mean_N, jnp.inf)).astype(jnp.int32)
    cold = (num_labeled == 0) & avail_N[first]
    m_N = lax.cond(
        cold,
        lambda: _min_sq_dist_update(
            x_ND, x_sq_N, inf_N, x_ND[first][None], jnp.ones((1,), bool), chunk_size
        ),
        lambda: m_N,
    )
    picks = jnp.full((k + _KC_GROUP,), -1, jnp.int32)
    picks = jnp.where(cold, picks.at[0].set(first), picks)
    avail_N = avail_N & ~(cold & (jnp.arange(n) == first))
    top = min(_KC_TOP, n)

    def batch(state):
        num_picked, picks, m_N, avail_N, _ = state
        score = jnp.concatenate([jnp.where(avail_N, m_N, -jnp.inf), jnp.full((1,), -jnp.inf)])
        vals, idx = lax.top_k(score, top + 1)
        tau, vals_T, idx_T = vals[top], vals[:top], jnp.minimum(idx[:top], n - 1)
        x_TD = x_ND[idx_T]
        x_sq_T = x_sq_N[idx_T]
        d_TT = _sq_dists(x_TD, x_sq_T, x_TD, x_sq_T)

        def replay(s):
            nb, cur_T, pos_G, _ = s
            best = jnp.max(cur_T)
            pos = jnp.argmin(jnp.where(cur_T == best, idx_T, n))  # lowest pool index
            ok = (best > -jnp.inf) & ((nb == 0) | (best > tau))
            cur_T = jnp.where(ok, jnp.minimum(cur_T, d_TT[pos]).at[pos].set(-jnp.inf), cur_T)
            return nb + ok, cur_T, jnp.where(ok, pos_G.at[nb].set(pos), pos_G), ~ok

        nb, _, pos_G, _ = lax.while_loop(
            lambda s: ~s[3] & (s[0] < _KC_GROUP) & (num_picked + s[0] < k),
            replay,
            (0, vals_T, jnp.zeros((_KC_GROUP,), jnp.int32), jnp.zeros((), bool)),
        )
        valid_G = jnp.arange(_KC_GROUP) < nb
        new_G = jnp.where(valid_G, idx_T[pos_G], -1)

        def update(width):
            return lambda m: _min_sq_dist_update(
                x_ND, x_sq_N, m, x_ND[idx_T[pos_G[:width]]], valid_G[:width], chunk_size
            )

        m_N = lax.cond(nb <= _KC_SMALL_GROUP, update(_KC_SMALL_GROUP), update(_KC_GROUP), m_N)
        avail_N = avail_N.at[jnp.where(valid_G, new_G, n)].set(False, mode="drop")
        picks = lax.dynamic_update_slice(picks, new_G, (num_picked,))
        return num_picked + nb, picks, m_N, avail_N, nb == 0

    state = (cold.astype(jnp.int32), picks, m_N, avail_N, jnp.zeros((), bool))
    _, picks, _, _, _ = lax.while_loop(lambda s: (s[0] < k) & ~s[4], batch, state)
    return picks[:k]


def kcenter_greedy(
    feats_ND: jax.typing.ArrayLike,
    labeled_mask: jax.typing.ArrayLike,
    candidates: jax.typing.ArrayLike,
    k: int,
    *,
    chunk_size: int | None = None,
) -> jax.Array:
    """Core-Set greedy k-center (Sener & Savarese 2018): farthest candidate first, k times.

    Each pick is the candidate with the largest Euclidean distance to the labeled images and
    the picks so far (``argmax_i min_j ||x_i - c_j||``); ties go to the lowest pool index.
    With nothing labeled, the first pick is the candidate nearest the mean of the
    candidates. Memory is O(N) beyond the features (one running min-distance per image, no
    N x N matrix); exact greedy picks are batched (see `_KC_TOP`), so on spread-out
    features a pass over the pool makes up to 128 picks instead of one.

    Args:
      feats_ND: (N, D) float features of the pool.
      labeled_mask: (N,) bool, True where labeled (the initial centers).
      candidates: index array or (N,) bool mask of the images that may be picked; must not
        include labeled images.
      k: number of images to pick.
      chunk_size: rows per distance block (caps the (rows, 128) temporaries).

    Returns:
      (k,) int32 distinct pool indices in greedy order.
    """
    k = _check_k(k)
    x_ND = as_float_matrix(feats_ND, "feats_ND")
    labeled_N = _check_labeled(labeled_mask, x_ND.shape[0])
    cand_N = _candidate_mask(candidates, x_ND.shape[0], k)
    _check_disjoint(cand_N, labeled_N)
    check_finite(x_ND, "feats_ND")
    return _kcenter_core(x_ND, labeled_N, cand_N, k=k, chunk_size=check_chunk_size(chunk_size))


@functools.partial(jax.jit, static_argnames=("k",))
def _badge_core(key, probs_NC, x_ND, mask_N, *, k):
    num_classes = probs_NC.shape[1]
    a_NC = probs_NC - jax.nn.one_hot(jnp.argmax(probs_NC, 1), num_classes, dtype=probs_NC.dtype)
    g_sq_N = jnp.sum(a_NC * a_NC, 1) * jnp.sum(x_ND * x_ND, 1)

    def sq_dist_to(i):
        # ||g_n - g_i||^2 with g = a (x) x, from dot products of the factors.
        aa_N = jnp.dot(a_NC, a_NC[i], precision=_HIGHEST)
        xx_N = jnp.dot(x_ND, x_ND[i], precision=_HIGHEST)
        return jnp.maximum(g_sq_N + g_sq_N[i] - 2.0 * aa_N * xx_N, 0.0)

    first = jnp.argmax(jnp.where(mask_N, g_sq_N, -jnp.inf)).astype(jnp.int32)
    picks = jnp.full((k,), -1, jnp.int32).at[0].set(jnp.where(mask_N[first], first, -1))

    def body(t, state):
        picks, closest_N, avail_N = state
        i = sample_proportional(
            jax.random.fold_in(key, t), jnp.where(avail_N, closest_N, 0.0), 1, avail_N
        )[0]
        ok = avail_N[i]
        return (
            picks.at[t].set(jnp.where(ok, i, -1)),
            jnp.minimum(closest_N, sq_dist_to(i)),
            avail_N.at[i].set(False),
        )

    state = (picks, sq_dist_to(first), mask_N.at[first].set(False))
    return lax.fori_loop(1, k, body, state)[0]


def badge(
    key: jax.Array,
    probs_NC: jax.typing.ArrayLike,
    feats_ND: jax.typing.ArrayLike,
    candidates: jax.typing.ArrayLike,
    k: int,
) -> jax.Array:
    """BADGE (Ash et al. 2020): k-means++ seeding on gradient embeddings.

    The embedding of image n is ``g_n = (p_n - onehot(argmax p_n)) (x) f_n``, the gradient of
    the cross-entropy at the predicted label w.r.t. the last linear layer. It is never
    materialised (N x C*D): ``||g_n - g_m||^2 = ||a_n||^2 ||f_n||^2 + ||a_m||^2 ||f_m||^2 -
    2 (a_n . a_m)(f_n . f_m)``. As the released BADGE, the first pick is the largest
    embedding norm (ties: lowest index), the next ones are drawn with probability
    proportional to the squared distance to the picks so far.

    Args:
      key: PRNG key for the D^2 draws.
      probs_NC: (N, C) class probabilities of the pool.
      feats_ND: (N, D) penultimate-layer features of the pool.
      candidates: index array or (N,) bool mask of the images that may be picked.
      k: number of images to pick.

    Returns:
      (k,) int32 distinct pool indices in seeding order.
    """
    k = _check_k(k)
    probs_NC = _as_probs(probs_NC, "probs_NC", 2)
    x_ND = as_float_matrix(feats_ND, "feats_ND")
    if probs_NC.shape[0] != x_ND.shape[0]:
        raise ValueError(f"probs_NC has {probs_NC.shape[0]} rows but feats_ND has {x_ND.shape[0]}")
    check_finite(x_ND, "feats_ND")
    mask_N = _candidate_mask(candidates, x_ND.shape[0], k)
    dtype = jnp.promote_types(probs_NC.dtype, x_ND.dtype)
    return _badge_core(key, probs_NC.astype(dtype), x_ND.astype(dtype), mask_N, k=k)


# ---------------------------------------------------------------------------------------------
# TypiClust.


@functools.partial(jax.jit, static_argnames=("num_neighbors", "chunk_size"))
def _typicality_core(f_MD, valid_M, nn_eff, *, num_neighbors, chunk_size):
    m = f_MD.shape[0]
    f_sq_M = jnp.sum(f_MD * f_MD, 1)

    def fn(carry, block, valid):
        f_c, f_sq_c, row_c = block
        d2_cM = _sq_dists(f_c, f_sq_c, f_MD, f_sq_M)
        keep = valid_M[None, :] & (row_c[:, None] != jnp.arange(m)[None, :])
        neg_cK, _ = lax.top_k(-jnp.where(keep, d2_cM, jnp.inf), num_neighbors)
        d_cK = jnp.sqrt(jnp.maximum(-neg_cK, 0.0))
        use = jnp.arange(num_neighbors)[None, :] < nn_eff
        mean_c = jnp.sum(jnp.where(use, d_cK, 0.0), 1) / jnp.maximum(nn_eff, 1)
        return carry, 1.0 / (mean_c + 1e-5)

    typ_M = map_chunks(fn, None, (f_MD, f_sq_M, jnp.arange(m)), chunk_size)[1]
    return jnp.where(valid_M, typ_M, -jnp.inf)


def _typicality(feats_MD: np.ndarray, num_neighbors: int) -> np.ndarray:
    """Inverse mean Euclidean distance to the min(num_neighbors, M // 2) nearest neighbours."""
    m = feats_MD.shape[0]
    size = max(8, num_neighbors + 1, 1 << (m - 1).bit_length())  # few distinct shapes
    padded = np.zeros((size, feats_MD.shape[1]), feats_MD.dtype)
    padded[:m] = feats_MD
    typ = _typicality_core(
        padded,
        np.arange(size) < m,
        min(num_neighbors, m // 2),
        num_neighbors=num_neighbors,
        chunk_size=1024 if size > 1024 else None,
    )
    return np.asarray(typ)[:m]


def typiclust(
    key: jax.Array,
    feats_ND: jax.typing.ArrayLike,
    labeled_mask: jax.typing.ArrayLike,
    candidates: jax.typing.ArrayLike,
    k: int,
    *,
    num_neighbors: int = 20,
    max_clusters: int = 500,
    min_cluster_size: int = 5,
    chunk_size: int | None = None,
) -> np.ndarray:
    """TypiClust (Hacohen et al. 2022): the most typical image of the least covered clusters.

    The pool is clustered by `kmeans` into ``min(|L| + k, max_clusters)`` clusters. Clusters
    are visited round-robin ordered by fewest labeled images, then largest size (clusters of
    at most `min_cluster_size` images come last, where the original drops them). Each visit
    picks the candidate of highest typicality, ``1 / mean Euclidean distance to its
    min(num_neighbors, n // 2) nearest neighbours`` among the n unlabeled, not yet picked
    images of the cluster (the paper's definition; its code used squared distances);
    clusters without a remaining candidate are skipped.

    Args:
      key: PRNG key for the clustering.
      feats_ND: (N, D) float (self-supervised) features of the pool.
      labeled_mask: (N,) bool, True where labeled.
      candidates: index array or (N,) bool mask; must not include labeled images.
      k: number of images to pick.
      num_neighbors: neighbours of the typicality estimate.
      max_clusters: cap on the number of clusters.
      min_cluster_size: clusters this small are visited last.
      chunk_size: rows per distance block of the clustering.

    Returns:
      (k,) int32 distinct pool indices (NumPy; host code).
    """
    k = _check_k(k)
    num_neighbors = _check_k(num_neighbors, "num_neighbors")
    max_clusters = _check_k(max_clusters, "max_clusters")
    if isinstance(min_cluster_size, bool) or not isinstance(min_cluster_size, (int, np.integer)):
        raise ValueError(f"min_cluster_size must be an integer, got {min_cluster_size!r}")
    x_ND = as_float_matrix(feats_ND, "feats_ND")
    if is_tracer(x_ND):
        raise ValueError("typiclust is host code and cannot be traced by jax.jit")
    n = x_ND.shape[0]
    labeled_N = np.asarray(_check_labeled(labeled_mask, n))
    cand_N = np.asarray(_candidate_mask(candidates, n, k))
    _check_disjoint(jnp.asarray(cand_N), jnp.asarray(labeled_N))
    check_finite(x_ND, "feats_ND")
    num_clusters = min(int(labeled_N.sum()) + k, max_clusters, n)
    assign_N = np.asarray(
        kmeans(key, x_ND, num_clusters, chunk_size=chunk_size, n_init=1).assignments
    )
    sizes = np.bincount(assign_N, minlength=num_clusters)
    num_labeled = np.bincount(assign_N[labeled_N], minlength=num_clusters)
    visit = np.lexsort((np.arange(num_clusters), -sizes, num_labeled, sizes <= min_cluster_size))
    members = np.argsort(assign_N, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    feats = np.asarray(x_ND)
    remaining_N = ~labeled_N
    picks: list[int] = []
    misses = 0
    turn = 0
    while len(picks) < k:
        cluster = visit[turn % num_clusters]
        turn += 1
        idx = members[bounds[cluster] : bounds[cluster + 1]]
        idx = idx[remaining_N[idx]]
        is_cand = cand_N[idx]
        if not is_cand.any():
            misses += 1
            if misses > num_clusters:  # unreachable: k <= number of candidates
                raise RuntimeError("typiclust ran out of candidates")
            continue
        misses = 0
        typ = _typicality(feats[idx], num_neighbors)
        pick = int(idx[np.flatnonzero(is_cand)[np.argmax(typ[is_cand])]])
        picks.append(pick)
        remaining_N[pick] = False
    return np.asarray(picks, np.int32)
