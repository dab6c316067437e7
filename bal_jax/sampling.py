"""Samplers: pick k images from a candidate set (SPEC Step 5 and the paper's baselines).

Usage::

    picked = least_confidence(probs_NC, subpool_idx, k)             # BAL, cycles >= 1 (Eq. 8)
    picked = first_k(order_N, subpool_idx, k)                       # BAL, first cycle

The feature-based samplers (Core-Set, BADGE, k-means centres, TypiClust) are in
`bal_jax.diversity`, with the same conventions.

Conventions shared by every sampler:

- Scores, probabilities and features cover the whole pool (N rows); `candidates` says which
  rows may be picked, either as an integer index array (distinct pool indices, any order) or
  as an (N,) boolean mask. Both give the same result, except for `random`, which draws one
  number per entry of what it is given.
- The result is a (k,) int32 array of k distinct pool indices from the candidate set, best
  first. Ties are broken deterministically: lowest pool index first.
- Inputs are validated in Python (shapes, dtypes, k <= number of candidates, NaN/inf, ...)
  and the numeric work runs in a jitted core. The score-based samplers, `random`, `first_k`,
  `kmeans_centers`, `kcenter_greedy` and `badge` can also be traced by an outer `jax.jit`
  (make `k` static): the value checks cannot raise there, and picks that cannot be made
  (k larger than the candidate set) come back as -1. `typiclust` is host code (its clusters
  have data-dependent sizes).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import entr

from bal_jax.blocks import as_float_matrix, check_finite, is_tracer

__all__ = [
    "bald",
    "entropy",
    "first_k",
    "least_confidence",
    "margin",
    "random",
]

_HIGHEST = lax.Precision.HIGHEST

# ---------------------------------------------------------------------------------------------
# Validation helpers.


def _check_k(k, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {k!r}")
    if k < 1:
        raise ValueError(f"{name} must be >= 1, got {k}")
    return int(k)


def _as_1d(a, name: str):
    if not hasattr(a, "dtype"):
        a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(a.shape)}")
    return a


def _check_count(mask: jax.Array, k: int, what: str = "candidates") -> None:
    if is_tracer(mask):
        return
    count = int(jnp.sum(mask))
    if count == 0:
        raise ValueError(f"the candidate set is empty (no {what})")
    if k > count:
        raise ValueError(f"k={k} is larger than the number of {what} ({count})")


def _candidate_mask(candidates, pool_size: int, k: int) -> jax.Array:
    """(N,) bool mask of an index array or mask of candidates, validated."""
    candidates = _as_1d(candidates, "candidates")
    if candidates.shape[0] == 0:
        raise ValueError("the candidate set is empty")
    if candidates.dtype == bool:
        if candidates.shape[0] != pool_size:
            raise ValueError(
                f"a candidate mask must have the pool's length {pool_size}, "
                f"got {candidates.shape[0]}"
            )
        mask = jnp.asarray(candidates)
    elif jnp.issubdtype(candidates.dtype, jnp.integer):
        if not is_tracer(candidates):
            idx = np.asarray(candidates)
            if idx.min() < 0 or idx.max() >= pool_size:
                raise ValueError(
                    f"candidate indices must be in [0, {pool_size}), got range "
                    f"[{idx.min()}, {idx.max()}]"
                )
            if np.unique(idx).shape[0] != idx.shape[0]:
                raise ValueError("candidate indices must be distinct")
        mask = jnp.zeros((pool_size,), bool).at[jnp.asarray(candidates)].set(True)
    else:
        raise ValueError(
            f"candidates must be an integer index array or a bool mask, got {candidates.dtype}"
        )
    _check_count(mask, k)
    return mask


def _check_labeled(labeled_mask, pool_size: int) -> jax.Array:
    labeled_mask = _as_1d(labeled_mask, "labeled_mask")
    if labeled_mask.dtype != bool or labeled_mask.shape[0] != pool_size:
        raise ValueError(
            f"labeled_mask must be a ({pool_size},) bool array, got {labeled_mask.dtype} "
            f"{tuple(labeled_mask.shape)}"
        )
    return jnp.asarray(labeled_mask)


def _check_disjoint(cand_N: jax.Array, labeled_N: jax.Array) -> None:
    if not is_tracer(cand_N) and not is_tracer(labeled_N):
        overlap = int(jnp.sum(cand_N & labeled_N))
        if overlap:
            raise ValueError(f"{overlap} candidates are already labeled")


@jax.jit
def _prob_stats(p):
    return jnp.all(jnp.isfinite(p)), jnp.min(p), jnp.max(jnp.abs(jnp.sum(p, -1) - 1.0))


def _as_probs(probs, name: str, ndim: int, atol: float = 1e-3) -> jax.Array:
    if not hasattr(probs, "dtype"):
        probs = np.asarray(probs)
    if probs.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(probs.shape)}")
    if not jnp.issubdtype(probs.dtype, jnp.floating):
        raise ValueError(f"{name} must have a floating dtype, got {probs.dtype}")
    probs = jnp.asarray(probs)
    probs = probs.astype(jnp.promote_types(probs.dtype, jnp.float32))
    if not is_tracer(probs) and probs.size:
        finite, low, dev = (float(v) for v in _prob_stats(probs))
        if not finite:
            raise ValueError(f"{name} holds NaN or inf values")
        if low < -atol or dev > atol:
            raise ValueError(
                f"{name} rows must be probability distributions (>= 0, summing to 1); "
                f"min {low:.3g}, largest |sum - 1| {dev:.3g}"
            )
    return probs


# ---------------------------------------------------------------------------------------------
# Score-based samplers.


@functools.partial(jax.jit, static_argnames=("k",))
def _top_k_masked(score_N, mask_N, *, k):
    _, idx = lax.top_k(jnp.where(mask_N, score_N, -jnp.inf), k)
    return jnp.where(mask_N[idx], idx, -1).astype(jnp.int32)


@jax.jit
def _neg_max_prob(probs_NC):
    return -jnp.max(probs_NC, axis=1)


@functools.partial(jax.jit, static_argnames=("normalize",))
def _neg_max_softmax(logits_NC, *, normalize):
    if normalize:
        norm_N = jnp.linalg.norm(logits_NC, axis=1, keepdims=True)
        logits_NC = logits_NC / jnp.maximum(norm_N, jnp.finfo(logits_NC.dtype).tiny)
    return -jnp.max(jax.nn.softmax(logits_NC, axis=1), axis=1)


def least_confidence(
    probs_NC: jax.typing.ArrayLike | None,
    candidates: jax.typing.ArrayLike,
    k: int,
    *,
    logits: jax.typing.ArrayLike | None = None,
    normalize_logits: bool = False,
) -> jax.Array:
    """The k candidates with the lowest maximum softmax probability (paper Eq. 8).

    Score: ``max_c p(c | x)``, lowest first. With ``normalize_logits=True`` the probabilities
    are ``softmax(z / ||z||_2)`` of the `logits` z, the released BAL code's variant (it
    L2-normalises the logits before the softmax).

    Args:
      probs_NC: (N, C) class probabilities of the pool; may be None when `logits` are given.
        Ignored when ``normalize_logits=True``.
      candidates: index array or (N,) bool mask of the images that may be picked.
      k: number of images to pick.
      logits: (N, C) logits; required by ``normalize_logits=True``, used (plain softmax)
        when `probs_NC` is None.
      normalize_logits: use ``softmax(z / ||z||)`` (released code) instead of `probs_NC`.

    Returns:
      (k,) int32 distinct pool indices, least confident first.
    """
    k = _check_k(k)
    if normalize_logits or probs_NC is None:
        if logits is None:
            raise ValueError("least_confidence needs logits when normalize_logits=True")
        z = as_float_matrix(logits, "logits")
        check_finite(z, "logits")
        score_N = _neg_max_softmax(z, normalize=bool(normalize_logits))
    else:
        score_N = _neg_max_prob(_as_probs(probs_NC, "probs_NC", 2))
    return _top_k_masked(score_N, _candidate_mask(candidates, score_N.shape[0], k), k=k)


@jax.jit
def _entropy(probs_NC):
    return jnp.sum(entr(probs_NC), axis=-1)


def entropy(probs_NC: jax.typing.ArrayLike, candidates: jax.typing.ArrayLike, k: int) -> jax.Array:
    """The k candidates with the highest predictive entropy ``-sum_c p log p``.

    (The released code's entropy sampler returned one image k times; this returns k
    distinct ones.)

    Args:
      probs_NC: (N, C) class probabilities of the pool.
      candidates: index array or (N,) bool mask of the images that may be picked.
      k: number of images to pick.

    Returns:
      (k,) int32 distinct pool indices, highest entropy first.
    """
    k = _check_k(k)
    score_N = _entropy(_as_probs(probs_NC, "probs_NC", 2))
    return _top_k_masked(score_N, _candidate_mask(candidates, score_N.shape[0], k), k=k)


@jax.jit
def _neg_margin(probs_NC):
    top_N2, _ = lax.top_k(probs_NC, 2)
    return top_N2[:, 1] - top_N2[:, 0]


def margin(probs_NC: jax.typing.ArrayLike, candidates: jax.typing.ArrayLike, k: int) -> jax.Array:
    """The k candidates with the smallest margin ``p_(1) - p_(2)`` between the top-2 classes.

    Args:
      probs_NC: (N, C) class probabilities of the pool, C >= 2.
      candidates: index array or (N,) bool mask of the images that may be picked.
      k: number of images to pick.

    Returns:
      (k,) int32 distinct pool indices, smallest margin first.
    """
    k = _check_k(k)
    probs_NC = _as_probs(probs_NC, "probs_NC", 2)
    if probs_NC.shape[1] < 2:
        raise ValueError(f"margin needs at least 2 classes, got {probs_NC.shape[1]}")
    score_N = _neg_margin(probs_NC)
    return _top_k_masked(score_N, _candidate_mask(candidates, score_N.shape[0], k), k=k)


@jax.jit
def _mutual_information(probs_TNC):
    mean_entropy_N = jnp.sum(entr(jnp.mean(probs_TNC, axis=0)), axis=-1)
    entropy_mean_N = jnp.mean(jnp.sum(entr(probs_TNC), axis=-1), axis=0)
    return mean_entropy_N - entropy_mean_N


def bald(probs_TNC: jax.typing.ArrayLike, candidates: jax.typing.ArrayLike, k: int) -> jax.Array:
    """BALD (Houlsby et al. 2011; DBAL, Gal et al. 2017): highest mutual information first.

    ``I(y; w | x) = H(mean_t p_t) - mean_t H(p_t)`` over T stochastic (MC-dropout) passes.

    Args:
      probs_TNC: (T, N, C) class probabilities of T dropout samples of the pool.
      candidates: index array or (N,) bool mask of the images that may be picked.
      k: number of images to pick.

    Returns:
      (k,) int32 distinct pool indices, most informative first.
    """
    k = _check_k(k)
    score_N = _mutual_information(_as_probs(probs_TNC, "probs_TNC", 3))
    return _top_k_masked(score_N, _candidate_mask(candidates, score_N.shape[0], k), k=k)


# ---------------------------------------------------------------------------------------------
# Order-based samplers.


@functools.partial(jax.jit, static_argnames=("k",))
def _random_masked(key, mask_N, *, k):
    u_N = jax.random.uniform(key, mask_N.shape)
    _, idx = lax.top_k(jnp.where(mask_N, u_N, -1.0), k)
    return jnp.where(mask_N[idx], idx, -1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("k",))
def _random_indexed(key, idx_M, *, k):
    _, pos = lax.top_k(jax.random.uniform(key, idx_M.shape), k)
    return idx_M[pos].astype(jnp.int32)


def random(key: jax.Array, candidates: jax.typing.ArrayLike, k: int) -> jax.Array:
    """k candidates uniformly at random, without replacement.

    (The released code drew with replacement and could label an image twice.) One uniform
    number is drawn per entry of `candidates` and the k largest win, so a mask and the
    equivalent index array give different (equally random) draws.

    Args:
      key: PRNG key; the same key and candidates give the same selection.
      candidates: index array of distinct pool indices, or bool mask over the pool.
      k: number of images to pick.

    Returns:
      (k,) int32 distinct pool indices in random order.
    """
    k = _check_k(k)
    candidates = _as_1d(candidates, "candidates")
    if candidates.shape[0] == 0:
        raise ValueError("the candidate set is empty")
    if candidates.dtype == bool:
        mask_N = _candidate_mask(candidates, candidates.shape[0], k)
        return _random_masked(key, mask_N, k=k)
    if not jnp.issubdtype(candidates.dtype, jnp.integer):
        raise ValueError(
            f"candidates must be an integer index array or a bool mask, got {candidates.dtype}"
        )
    if k > candidates.shape[0]:
        raise ValueError(f"k={k} is larger than the number of candidates ({candidates.shape[0]})")
    if not is_tracer(candidates):
        c = np.asarray(candidates)
        if c.min() < 0 or np.unique(c).shape[0] != c.shape[0]:
            raise ValueError("candidate indices must be distinct and non-negative")
    return _random_indexed(key, jnp.asarray(candidates), k=k)


@functools.partial(jax.jit, static_argnames=("k",))
def _first_k_core(order_M, is_cand_M, *, k):
    m = order_M.shape[0]
    score_M = jnp.where(is_cand_M, m - jnp.arange(m, dtype=jnp.int32), 0)
    _, pos = lax.top_k(score_M, k)
    return jnp.where(is_cand_M[pos], order_M[pos], -1).astype(jnp.int32)


@jax.jit
def _is_member(values_M, members_P):
    sorted_P = jnp.sort(members_P)
    pos = jnp.clip(jnp.searchsorted(sorted_P, values_M), 0, sorted_P.shape[0] - 1)
    return sorted_P[pos] == values_M


def first_k(order: jax.typing.ArrayLike, candidates: jax.typing.ArrayLike, k: int) -> jax.Array:
    """The first k candidates in `order` (BAL's first cycle: lowest CDD first, SPEC Step 5).

    Args:
      order: (M,) distinct pool indices in the order to take them (e.g. the CDD order S or
        a sub-pool); pool indices that are not candidates are skipped.
      candidates: index array, or bool mask indexed by pool index.
      k: number of images to pick.

    Returns:
      (k,) int32 distinct pool indices, in `order`'s order.
    """
    k = _check_k(k)
    order = _as_1d(order, "order")
    if not jnp.issubdtype(order.dtype, jnp.integer):
        raise ValueError(f"order must hold integer pool indices, got {order.dtype}")
    candidates = _as_1d(candidates, "candidates")
    if candidates.shape[0] == 0:
        raise ValueError("the candidate set is empty")
    if k > order.shape[0]:
        raise ValueError(f"k={k} is larger than the order's length {order.shape[0]}")
    if not is_tracer(order):
        o = np.asarray(order)
        if o.min() < 0 or np.unique(o).shape[0] != o.shape[0]:
            raise ValueError("order must hold distinct non-negative pool indices")
    order = jnp.asarray(order)
    if candidates.dtype == bool:
        if not is_tracer(order) and int(order.max()) >= candidates.shape[0]:
            raise ValueError(
                f"order holds index {int(order.max())} beyond the candidate mask's length "
                f"{candidates.shape[0]}"
            )
        is_cand_M = jnp.asarray(candidates)[order]
    elif jnp.issubdtype(candidates.dtype, jnp.integer):
        if not is_tracer(candidates):
            c = np.asarray(candidates)
            if np.unique(c).shape[0] != c.shape[0]:
                raise ValueError("candidate indices must be distinct")
        is_cand_M = _is_member(order, jnp.asarray(candidates))
    else:
        raise ValueError(
            f"candidates must be an integer index array or a bool mask, got {candidates.dtype}"
        )
    _check_count(is_cand_M, k, "candidates in order")
    return _first_k_core(order, is_cand_M, k=k)


# The query check shared by the sub-pool methods (bal_jax.methods, pt4al, bal_cover).


def check_query(k: int, labeled_mask: np.ndarray, pool_size: int, probs, logits) -> None:
    """One sentence naming the bad argument before any sub-pool arithmetic."""
    if labeled_mask.shape != (pool_size,):
        raise ValueError(
            f"labeled_mask has shape {labeled_mask.shape}; the order has {pool_size} images"
        )
    free = int((~labeled_mask).sum())
    if isinstance(k, bool) or int(k) != k or not 1 <= k <= free:
        raise ValueError(f"k={k} must be in [1, {free}], the unlabeled images left in the pool")
    for name, value in (("probs", probs), ("logits", logits)):
        if value is not None and (np.ndim(value) != 2 or np.shape(value)[0] != pool_size):
            raise ValueError(
                f"{name} must have shape ({pool_size}, num_classes), one row per pool image; "
                f"got {np.shape(value)}"
            )
