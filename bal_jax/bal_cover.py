"""BAL-cover: BAL's sub-pools with uncertainty-weighted coverage inside (``--method=bal_cover``).

Usage::

    order = bal_order(key, feats_ND, num_clusters=10)                 # SPEC Step 2, unchanged
    picked = bal_cover_select(order=order, feats_ND=feats_ND, labeled_mask=labeled_N, cycle=c,
                              num_cycles=5, k=200, beta=1.0, sigma=sigma, probs=probs_NC)

What it changes, in SPEC terms (the paper's BAL, ``--method=bal``, stays as it is). Like
``bal_herding`` it labels MaxHerding's picks (Bae et al. 2024, `bal_jax.coverage.maxherding`)
while fewer than ``switch_fraction`` of the pool is labeled (`bal_jax.methods.switch_cycle`;
``--switch_fraction=0.02`` makes that the first cycle only). From the switch on:

- Steps 3-4 unchanged: the candidates are BAL's adaptive sub-pool D_i of the CDD order (Eq.
  6-7, with its own beta found by Eq. 9 on the validation split).
- Step 5: instead of the k least confident images of D_i (Eq. 8), which can all sit in one
  confusing region (measured: after a MaxHerding start, BAL's least-confident windows fall
  1.0 point behind continued MaxHerding at 6 % labeled on CIFAR-10,
  experiments/reports/cifar10_cpu_linear.md), the k picks greedily maximise a coverage of the
  pool in which each image counts by the model's uncertainty, its least confidence
  ``u_j = 1 - max_c p_jc`` (the quantity of Eq. 8):
  ``sum_j u_j max_{l in L + picks} exp(-||x_j - x_l||^2 / (2 sigma^2))``. A pick is still a
  candidate of the window, but it is worth most where many uncertain images are near it and
  not yet near a labeled one: diversity (coverage) and novelty (uncertainty, the CDD window)
  in one greedy rule.
"""

from __future__ import annotations

import numpy as np

from bal_jax import coverage, subpools
from bal_jax.sampling import check_query


def bal_cover_select(
    *,
    order: np.ndarray,
    feats_ND: np.ndarray,
    labeled_mask: np.ndarray,
    cycle: int,
    num_cycles: int,
    k: int,
    beta: float,
    sigma: float | None,
    probs: np.ndarray | None,
    window_variant: str = "paper",
) -> np.ndarray:
    """BAL-cover's query for a cycle at or past the switch (see the module docstring).

    Args:
      order: (N,) the pool in CDD order, from ``bal_order`` (SPEC Step 2).
      feats_ND: (N, D) the pretext features the order was computed from.
      labeled_mask: (N,) bool, True where already labeled.
      cycle: 0-based cycle.
      num_cycles: C.
      k: images to label this cycle.
      beta: balancing factor of the sub-pools (Eq. 6-7).
      sigma: MaxHerding's bandwidth (None: `coverage.default_sigma` of the features).
      probs: (N, C) softmax of the previous cycle's model.
      window_variant: 'paper' or 'released' sub-pool windows (SPEC Step 3).

    Returns:
      (k,) distinct pool indices, none previously labeled, in greedy order.
    """
    if feats_ND is None:
        raise ValueError("bal_cover needs the pretext features")
    if probs is None:
        raise ValueError("bal_cover needs the main model's probabilities after its switch")
    labeled_mask = np.asarray(labeled_mask, bool)
    check_query(k, labeled_mask, labeled_mask.shape[0], probs, None)
    cand_N = subpools.window_mask(
        order,
        labeled_mask,
        cycle=cycle,
        num_cycles=num_cycles,
        beta=beta,
        k=k,
        variant=window_variant,
    )
    sigma = coverage.default_sigma(feats_ND) if sigma is None else sigma
    uncertainty_N = 1.0 - np.asarray(probs, np.float64).max(axis=1)
    picked = coverage.maxherding(
        feats_ND, labeled_mask, k, sigma=sigma, candidates=cand_N, weights=uncertainty_N
    )
    return np.asarray(picked)
