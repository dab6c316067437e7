"""Query strategies: BAL (with its ablations) and the paper's baselines behind one `select`.

Usage, BAL on your own model's outputs (no runner needed)::

    order = bal_jax.bal_order(key, feats_ND, num_clusters=10)        # once, from pretext features
    picked = bal_jax.bal_select(
        key, order=order, labeled_mask=labeled_N, cycle=c, num_cycles=5, k=1000, beta=1.2,
        probs=softmax_NC,                                            # your model, this cycle
    )

`select` dispatches every method of the runner's `--method` flag. All functions return
int indices into the pool, distinct and never already labeled.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bal_jax import coverage, diversity, sampling, subpools
from bal_jax.bal_cover import bal_cover_select
from bal_jax.kmeans import cdd, kmeans, pairwise_sq_dists
from bal_jax.pt4al import pt4al_select
from bal_jax.sampling import check_query
from bal_jax.subpools import candidates_mask
from bal_jax.typical import bal_typical_select

METHODS = (
    "bal",
    "pt4al",
    "random",
    "confidence",
    "entropy",
    "margin",
    "coreset",
    "dbal",
    "badge",
    "typiclust",
    "bal_typical",
    "bal_switch",
    "probcover",
    "maxherding",
    "bal_herding",
    "bal_cover",
)
# BAL variants that pick with a low-budget selector while fewer than `switch_fraction` of the
# pool is labeled (`switch_cycle`), TypiClust's typical images or MaxHerding's coverage, and
# after it with the paper's BAL, or BAL-cover's coverage inside BAL's windows (bal_cover.py).
SWITCH_SELECTORS = {
    "bal_switch": "typiclust",
    "bal_herding": "maxherding",
    "bal_cover": "maxherding",
}
# Methods that choose their own first labeled set; the rest start from a random set that
# is shared by all of them for a given seed.
HOT_START = frozenset(
    {"bal", "pt4al", "typiclust", "bal_typical", "probcover", "maxherding", *SWITCH_SELECTORS}
)
# What each method needs from the main model of the previous cycle.
NEEDS_PROBS = frozenset(
    {"bal", "pt4al", "confidence", "entropy", "margin", "badge", "bal_typical", *SWITCH_SELECTORS}
)
# Methods that draw from BAL's sub-pools and so need a beta (paper Eq. 9).
NEEDS_BETA = frozenset({"bal", "bal_typical", *SWITCH_SELECTORS})
# Methods that select with the pretext features.
NEEDS_PRETEXT = frozenset(
    {"bal", "pt4al", "typiclust", "bal_typical", "probcover", "maxherding", *SWITCH_SELECTORS}
)
NEEDS_FEATURES = frozenset({"coreset", "badge"})
NEEDS_MC_DROPOUT = frozenset({"dbal"})

BAL_SAMPLERS = ("confidence", "entropy", "kmeans", "random")
INDICATORS = ("cdd", "nearest_distance", "pretext_loss")


class BALOptions(NamedTuple):
    """BAL's switches; the defaults are the paper's method.

    sampler: how to pick inside a sub-pool after the first cycle (paper Eq. 8: confidence;
      Sec. 5.4 ablations: entropy, kmeans, random).
    descending: sort the indicator descending instead of ascending (ablation).
    indicator: 'cdd' (paper), 'nearest_distance' (distance to the nearest K-means center) or
      'pretext_loss' (rotation loss, as PT4AL): the value the pool is sorted by.
    uniform_subpools: equal, non-overlapping sub-pools (beta = 1, PT4AL-style, Eq. 11).
    window_variant: 'paper' windows in units of N/C, or 'released' in units of a fixed
      per-cycle budget A.
    window_budget: A for window_variant='released' (the released code's --addendum); the
      runner's default is the k of the last cycle (SPEC Step 3).
    normalize_logits: the released code's max softmax(z / ||z||) confidence.
    """

    sampler: str = "confidence"
    descending: bool = False
    indicator: str = "cdd"
    uniform_subpools: bool = False
    window_variant: str = "paper"
    window_budget: int | None = None
    normalize_logits: bool = False


class PoolPredictions(NamedTuple):
    """The previous cycle's main model on the whole pool; unused fields may be None."""

    probs_NC: np.ndarray | None = None
    logits_NC: np.ndarray | None = None
    features_ND: np.ndarray | None = None
    mc_probs_TNC: np.ndarray | None = None


def bal_order(
    key: jax.Array,
    feats_ND: jax.typing.ArrayLike,
    *,
    num_clusters: int,
    indicator: str = "cdd",
    descending: bool = False,
    pretext_losses_N: jax.typing.ArrayLike | None = None,
    chunk_size: int | None = None,
    n_init: int = 10,
) -> np.ndarray:
    """The pool sorted by BAL's indicator, S in the paper (SPEC Step 2), stable.

    Args:
      key: PRNG key for the K-means++ initialisation.
      feats_ND: pretext features of the pool.
      num_clusters: K (the number of classes in the paper).
      indicator: 'cdd' = d2 - d1 (paper), 'nearest_distance' = d1, 'pretext_loss'.
      descending: reverse the order (ablation; ties keep index order).
      pretext_losses_N: per-image rotation loss, required for indicator='pretext_loss'.
      chunk_size: rows per distance block for large pools.
      n_init: K-means restarts, the lowest inertia kept (10: scikit-learn's default before
        1.4, which the released code ran).

    Returns:
      (N,) int64 permutation of the pool.
    """
    if indicator not in INDICATORS:
        raise ValueError(f"unknown indicator {indicator!r}; choose one of {INDICATORS}")
    if indicator == "pretext_loss":
        if pretext_losses_N is None:
            raise ValueError("indicator='pretext_loss' needs pretext_losses_N")
        value = np.asarray(pretext_losses_N, np.float64)
    else:
        result = kmeans(key, feats_ND, num_clusters, chunk_size=chunk_size, n_init=n_init)
        if indicator == "cdd":
            value = np.asarray(cdd(feats_ND, result.centers, chunk_size=chunk_size))
        else:
            d2 = pairwise_sq_dists(jnp.asarray(feats_ND), result.centers)
            value = np.sqrt(np.maximum(np.asarray(d2).min(axis=1), 0.0))
    if not np.all(np.isfinite(value)):
        raise ValueError(f"the {indicator} values hold NaN or inf; check the features")
    return np.argsort(-value if descending else value, kind="stable")


def bal_min_beta(counts, *, pool_size: int, options: BALOptions | None = None) -> float:
    """The smallest beta whose every window holds its cycle's k images (SPEC Step 3).

    (k-1)*C/N with the paper's windows, (k-1)/A with the released code's windows of the
    fixed budget A = options.window_budget (k is the largest cycle's; see
    `subpools.min_beta` for the one image of rounding slack).
    """
    options = options or BALOptions()
    k = max(int(c) for c in counts)
    if options.window_variant == "released":
        if options.window_budget is None:
            raise ValueError("window_variant='released' needs options.window_budget (A)")
        return subpools.min_beta(
            min_size=k,
            num_cycles=len(counts),
            pool_size=pool_size,
            variant="released",
            budget=options.window_budget,
        )
    return subpools.min_beta(min_size=k, num_cycles=len(counts), pool_size=pool_size)


def _uncertainty(
    sampler: str, key, preds: PoolPredictions, cand_mask, k, *, normalize_logits=False
):
    if preds.probs_NC is None:
        raise ValueError(f"the {sampler} sampler needs the main model's probabilities")
    if sampler == "confidence":
        return sampling.least_confidence(
            preds.probs_NC,
            cand_mask,
            k,
            logits=preds.logits_NC,
            normalize_logits=normalize_logits,
        )
    if sampler == "entropy":
        return sampling.entropy(preds.probs_NC, cand_mask, k)
    if sampler == "margin":
        return sampling.margin(preds.probs_NC, cand_mask, k)
    raise ValueError(f"unknown uncertainty sampler {sampler!r}")


def bal_select(
    key: jax.Array,
    *,
    order: np.ndarray,
    labeled_mask: np.ndarray,
    cycle: int,
    num_cycles: int,
    k: int,
    beta: float,
    probs: np.ndarray | None = None,
    logits: np.ndarray | None = None,
    features: np.ndarray | None = None,
    budget: int | None = None,
    options: BALOptions | None = None,
) -> np.ndarray:
    """BAL's query for one cycle (paper Eq. 6-8): sub-pool, then sample inside it.

    Args:
      key: PRNG key (used by the random and kmeans samplers).
      order: (N,) the pool in indicator order, from `bal_order`.
      labeled_mask: (N,) bool, True where already labeled.
      cycle: 0-based cycle c (the paper's i = c + 1).
      num_cycles: C, the number of cycles of the budget.
      k: images to label this cycle.
      beta: balancing factor (window width beta * N / C).
      probs, logits: (N, C) outputs of the model trained in the previous cycle; needed from
        cycle 1 on by the confidence/entropy samplers (logits only with normalize_logits).
      features: (N, D) features for the kmeans sampler.
      budget: fixed per-cycle budget A for options.window_variant='released' (default:
        options.window_budget).
      options: the ablation switches (default: the paper's BAL).

    Returns:
      (k,) distinct pool indices, none previously labeled.
    """
    options = options or BALOptions()
    order = np.asarray(order)
    labeled_mask = np.asarray(labeled_mask, bool)
    pool_size = order.shape[0]
    check_query(k, labeled_mask, pool_size, probs, logits)
    if budget is None:
        budget = options.window_budget
    if options.window_variant == "released" and budget is None:
        raise ValueError("window_variant='released' needs the fixed per-cycle budget A (budget=)")
    cand = subpools.subpool(
        order,
        labeled_mask,
        cycle=cycle,
        num_cycles=num_cycles,
        beta=1.0 if options.uniform_subpools else beta,
        min_size=k,
        variant=options.window_variant,
        budget=budget,
    )
    cand = np.asarray(cand)
    if cycle == 0:
        # Paper Step 5: the first k of D_1 in indicator order (no model yet).
        return np.asarray(sampling.first_k(order, candidates_mask(cand, pool_size), k))
    mask = candidates_mask(cand, pool_size)
    if options.sampler == "random":
        return np.asarray(sampling.random(key, mask, k))
    if options.sampler == "kmeans":
        if features is None:
            raise ValueError("the kmeans sampler needs features")
        return np.asarray(diversity.kmeans_centers(key, features, mask, k))
    if options.sampler not in BAL_SAMPLERS:
        raise ValueError(f"unknown BAL sampler {options.sampler!r}; choose one of {BAL_SAMPLERS}")
    preds = PoolPredictions(probs_NC=probs, logits_NC=logits)
    return np.asarray(
        _uncertainty(
            options.sampler, key, preds, mask, k, normalize_logits=options.normalize_logits
        )
    )


class SelectionContext(NamedTuple):
    """Everything computed once per seed that the methods draw on."""

    bal_order: np.ndarray | None = None
    pt4al_order: np.ndarray | None = None
    pretext_features_ND: np.ndarray | None = None
    beta: float | None = None
    bal_options: BALOptions = BALOptions()
    # The released PT4AL ranks by max softmax(z / ||z||) (SPEC Step 5, baselines).
    pt4al_normalize_logits: bool = True
    # bal_switch: TypiClust picks while fewer than this fraction of the pool is labeled.
    switch_fraction: float = 0.1
    # probcover / maxherding (`bal_jax.coverage`): None computes delta (purity rule, K-means
    # into probcover_clusters = the number of classes) or sigma from the pretext features.
    probcover_delta: float | None = None
    probcover_clusters: int = coverage.DEFAULT_CLUSTERS
    maxherding_sigma: float | None = None


def switch_cycle(counts, *, pool_size: int, switch_fraction: float) -> int:
    """The first cycle ``bal_switch`` draws from BAL's sub-pools (``len(counts)``: none).

    ``--method=bal_switch`` is a documented variant of BAL for budgets that start low (the
    paper's BAL, ``bal``, stays as it is): while fewer than ``switch_fraction`` of the pool is
    labeled it picks typical images (TypiClust, Hacohen et al. 2022, whose experiments show
    typical examples win at low budgets and uncertain ones at high budgets); from the first
    cycle that starts at or above that fraction on it is the paper's BAL, SPEC Step 5 (the
    least confident images of the cycle's adaptive sub-pool D_i, Eq. 6-8, beta by Eq. 9).
    ``switch_fraction=0`` is the paper's BAL; at 1 it is TypiClust.
    """
    labeled = 0
    for cycle, k in enumerate(counts):
        if labeled >= switch_fraction * pool_size:
            return cycle
        labeled += int(k)
    return len(counts)


def needs_beta(
    method: str,
    counts,
    *,
    pool_size: int,
    switch_fraction: float,
    uniform_subpools: bool = False,
) -> bool:
    """Whether ``method`` draws from BAL's adaptive sub-pools in some cycle of ``counts``.

    The paper's BAL with uniform sub-pools has no beta, and ``bal_switch`` needs one only if
    the budget reaches its switch (below it, it is TypiClust: `switch_cycle`).
    """
    if method not in NEEDS_BETA or (method == "bal" and uniform_subpools):
        return False
    if method in SWITCH_SELECTORS:
        return switch_cycle(counts, pool_size=pool_size, switch_fraction=switch_fraction) < len(
            counts
        )
    return True


def select(
    method: str,
    key: jax.Array,
    *,
    cycle: int,
    num_cycles: int,
    k: int,
    labeled_mask: np.ndarray,
    context: SelectionContext,
    preds: PoolPredictions,
) -> np.ndarray:
    """One cycle's query for any method of `METHODS`.

    Cold-start methods (not in HOT_START) label a random set in cycle 0; the caller passes
    the same key for it to every such method so they share it.

    Returns:
      (k,) distinct indices of unlabeled pool images.
    """
    labeled_mask = np.asarray(labeled_mask, bool)
    unlabeled = ~labeled_mask
    if method in SWITCH_SELECTORS:
        below = labeled_mask.sum() < context.switch_fraction * labeled_mask.size
        # Low budget: typical / covering picks first, then BAL (`switch_cycle`).
        if below:
            method = SWITCH_SELECTORS[method]
        elif method != "bal_cover":
            method = "bal"
    if method == "bal":
        return bal_select(
            key,
            order=context.bal_order,
            labeled_mask=labeled_mask,
            cycle=cycle,
            num_cycles=num_cycles,
            k=k,
            beta=context.beta,
            probs=preds.probs_NC,
            logits=preds.logits_NC,
            features=context.pretext_features_ND,
            options=context.bal_options,
        )
    if method == "pt4al":
        return pt4al_select(
            key,
            loss_order=context.pt4al_order,
            labeled_mask=labeled_mask,
            cycle=cycle,
            num_cycles=num_cycles,
            k=k,
            probs=preds.probs_NC,
            logits=preds.logits_NC,
            normalize_logits=context.pt4al_normalize_logits,
        )
    if method in ("bal_typical", "bal_cover"):  # BAL's sub-pools, their own picks inside
        kw = dict(
            order=context.bal_order,
            feats_ND=context.pretext_features_ND,
            labeled_mask=labeled_mask,
            cycle=cycle,
            num_cycles=num_cycles,
            k=k,
            beta=context.beta,
            probs=preds.probs_NC,
            window_variant=context.bal_options.window_variant,
        )
        if method == "bal_typical":
            return bal_typical_select(key, **kw)
        return bal_cover_select(sigma=context.maxherding_sigma, **kw)
    if method == "typiclust":
        return np.asarray(
            diversity.typiclust(key, context.pretext_features_ND, labeled_mask, unlabeled, k)
        )
    if method in ("probcover", "maxherding"):
        return coverage.select(
            method,
            key,
            context.pretext_features_ND,
            labeled_mask,
            k,
            delta=context.probcover_delta,
            sigma=context.maxherding_sigma,
            num_clusters=context.probcover_clusters,
        )
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    if cycle == 0 or method == "random":
        return np.asarray(sampling.random(key, unlabeled, k))
    if method in ("confidence", "entropy", "margin"):
        return np.asarray(_uncertainty(method, key, preds, unlabeled, k))
    if method == "coreset":
        return np.asarray(diversity.kcenter_greedy(preds.features_ND, labeled_mask, unlabeled, k))
    if method == "dbal":
        return np.asarray(sampling.bald(preds.mc_probs_TNC, unlabeled, k))
    # badge
    return np.asarray(diversity.badge(key, preds.probs_NC, preds.features_ND, unlabeled, k))
