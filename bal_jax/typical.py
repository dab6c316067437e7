"""BAL-typical: BAL with a typical-first cold start for low budgets (``--method=bal_typical``).

Usage::

    order = bal_order(key, feats_ND, num_clusters=10)                 # SPEC Step 2, unchanged
    picked = bal_typical_select(key, order=order, feats_ND=feats_ND, labeled_mask=labeled_N,
                                cycle=c, num_cycles=5, k=200, beta=1.0, probs=probs_NC)

What it changes, in SPEC terms (the paper's BAL, ``--method=bal``, stays as it is):

- Step 5, first cycle. BAL takes the first k images of D_1 in ascending CDD order: the images
  closest to the boundary between two K-means clusters. With features that know the classes
  those are the most ambiguous images between two real classes, a poor first labeled set
  (issue 11 measured BAL 7.6 points below random over the 2-10 % curve with supervised
  features). BAL-typical instead picks typical images first, as Hacohen et al. 2022 ("Active
  learning on a budget", TypiClust) show wins at low budgets: K-means of the whole pool into
  k clusters, and the densest image of each (highest typicality, the inverse mean distance to
  its 20 nearest neighbours), ``bal_jax.diversity.typiclust``.
- Step 5, later cycles. The candidates are still BAL's adaptive sub-pool D_i (Steps 3-4,
  Eq. 6-7, with its own beta found by Eq. 9), but instead of the k least confident images of
  D_i (which can all sit in one confusing region) it covers the clusters: the pool is
  clustered into |L| + k clusters (TypiClust's rule), clusters are visited round-robin, fewest
  labeled images first, then largest first, and each visit takes the least confident remaining
  candidate of that cluster (diversity across clusters, uncertainty within one).
"""

from __future__ import annotations

import jax
import numpy as np

from bal_jax import diversity, sampling, subpools
from bal_jax.blocks import as_float_matrix, check_finite
from bal_jax.kmeans import kmeans

__all__ = ["bal_typical_select", "coverage_select"]


def coverage_select(
    key: jax.Array,
    feats_ND: jax.typing.ArrayLike,
    labeled_mask: jax.typing.ArrayLike,
    candidates: jax.typing.ArrayLike,
    score_N: jax.typing.ArrayLike,
    k: int,
    *,
    max_clusters: int = 500,
    min_cluster_size: int = 5,
) -> np.ndarray:
    """The highest-scoring candidate of each least covered cluster, round-robin.

    The pool is clustered by ``kmeans`` into ``min(|L| + k, max_clusters, N)`` clusters.
    Clusters are visited in the order of ``typiclust``: clusters of more than
    ``min_cluster_size`` images first, then fewest labeled images, then largest size, then
    lowest index; each visit picks the remaining candidate of the cluster with the highest
    score (ties: lowest pool index); clusters without one are skipped; after the last cluster
    the visit starts over.

    Args:
      key: PRNG key for the clustering.
      feats_ND: (N, D) features of the pool.
      labeled_mask: (N,) bool, True where labeled.
      candidates: index array or (N,) bool mask of pickable images (none labeled).
      score_N: (N,) finite scores, higher = picked first within a cluster (e.g. uncertainty).
      k: images to pick, at most the number of candidates.
      max_clusters: cap on the number of clusters.
      min_cluster_size: clusters this small are visited last.

    Returns:
      (k,) int32 distinct candidate indices (NumPy; host code), in the order picked.
    """
    k = sampling._check_k(k)
    x_ND = as_float_matrix(feats_ND, "feats_ND")
    n = x_ND.shape[0]
    labeled_N = np.asarray(sampling._check_labeled(labeled_mask, n))
    cand_N = np.asarray(sampling._candidate_mask(candidates, n, k))
    if (cand_N & labeled_N).any():
        raise ValueError(f"{int((cand_N & labeled_N).sum())} candidates are already labeled")
    score_N = np.asarray(score_N, np.float64)
    if score_N.shape != (n,) or not np.all(np.isfinite(score_N[cand_N])):
        raise ValueError(f"score_N must be ({n},) and finite on the candidates")
    check_finite(x_ND, "feats_ND")
    num_clusters = min(int(labeled_N.sum()) + k, sampling._check_k(max_clusters), n)
    assign_N = np.asarray(kmeans(key, x_ND, num_clusters).assignments)
    return _round_robin(assign_N, labeled_N, cand_N, score_N, k, min_cluster_size)


def _round_robin(assign_N, labeled_N, cand_N, score_N, k, min_cluster_size) -> np.ndarray:
    num_clusters = int(assign_N.max()) + 1
    sizes = np.bincount(assign_N, minlength=num_clusters)
    num_labeled = np.bincount(assign_N[labeled_N], minlength=num_clusters)
    visit = np.lexsort((np.arange(num_clusters), -sizes, num_labeled, sizes <= min_cluster_size))
    # Per cluster, its candidates best first (score descending, then index ascending).
    cand = np.flatnonzero(cand_N)
    cand = cand[np.lexsort((cand, -score_N[cand], assign_N[cand]))]
    starts = np.searchsorted(assign_N[cand], np.arange(num_clusters + 1))
    queues = [list(cand[starts[c] : starts[c + 1]]) for c in range(num_clusters)]
    visit = [c for c in visit if queues[c]]
    picks: list[int] = []
    while len(picks) < k:
        for cluster in visit:
            if queues[cluster] and len(picks) < k:
                picks.append(int(queues[cluster].pop(0)))
    return np.asarray(picks, np.int32)


def bal_typical_select(
    key: jax.Array,
    *,
    order: np.ndarray,
    feats_ND: np.ndarray,
    labeled_mask: np.ndarray,
    cycle: int,
    num_cycles: int,
    k: int,
    beta: float,
    probs: np.ndarray | None = None,
    window_variant: str = "paper",
    num_neighbors: int = 20,
) -> np.ndarray:
    """BAL-typical's query for one cycle (see the module docstring).

    Args:
      key: PRNG key (clustering).
      order: (N,) the pool in CDD order, from ``bal_order`` (SPEC Step 2).
      feats_ND: (N, D) the pretext features the order was computed from.
      labeled_mask: (N,) bool, True where already labeled.
      cycle: 0-based cycle.
      num_cycles: C.
      k: images to label this cycle.
      beta: balancing factor of the sub-pools of cycles >= 1 (Eq. 6-7).
      probs: (N, C) softmax of the previous cycle's model (cycles >= 1).
      window_variant: 'paper' or 'released' sub-pool windows (SPEC Step 3).
      num_neighbors: neighbours of the typicality estimate (cycle 0).

    Returns:
      (k,) distinct pool indices, none previously labeled.
    """
    labeled_mask = np.asarray(labeled_mask, bool)
    if feats_ND is None:
        raise ValueError("bal_typical needs the pretext features")
    if cycle == 0:
        return np.asarray(
            diversity.typiclust(
                key, feats_ND, labeled_mask, ~labeled_mask, k, num_neighbors=num_neighbors
            )
        )
    if probs is None:
        raise ValueError("bal_typical needs the main model's probabilities after cycle 0")
    cand = subpools.window_mask(
        order,
        labeled_mask,
        cycle=cycle,
        num_cycles=num_cycles,
        beta=beta,
        k=k,
        variant=window_variant,
    )
    uncertainty_N = 1.0 - np.max(np.asarray(probs, np.float64), axis=-1)
    return coverage_select(key, feats_ND, labeled_mask, cand, uncertainty_N, k)
