"""PT4AL (Yi et al., WACV 2022), the baseline BAL extends: pretext loss order, equal batches.

Usage::

    loss_order = np.argsort(-rotation_losses_N, kind="stable")       # descending pretext loss
    picked = pt4al_select(key, loss_order=loss_order, labeled_mask=labeled_N, cycle=c,
                          num_cycles=5, k=1000, probs=probs_NC, logits=logits_NC)
"""

from __future__ import annotations

import jax
import numpy as np

from bal_jax import sampling, subpools
from bal_jax.sampling import check_query
from bal_jax.subpools import candidates_mask


def pt4al_select(
    key: jax.Array,
    *,
    loss_order: np.ndarray,
    labeled_mask: np.ndarray,
    cycle: int,
    num_cycles: int,
    k: int,
    probs: np.ndarray | None = None,
    logits: np.ndarray | None = None,
    normalize_logits: bool = True,
) -> np.ndarray:
    """PT4AL: pretext loss descending, equal batches, confidence sampling inside a batch.

    The first cycle takes k images at even intervals of the first batch, as PT4AL's code
    does. `loss_order` must come from a numeric sort (the released code sorted strings).
    Later cycles take the k images of the batch with the lowest max softmax(z / ||z||) of
    the logits z, as the released PT4AL code ranks them (``normalize_logits=False``: plain
    max softmax of `probs`).

    Args:
      key: unused (PT4AL is deterministic given the model).
      loss_order: (N,) pool indices by descending rotation loss.
      labeled_mask: (N,) bool, True where already labeled.
      cycle, num_cycles, k: 0-based cycle, C and the images to label.
      probs, logits: (N, C) outputs of the previous cycle's model (from cycle 1 on).
      normalize_logits: rank by max softmax(z/||z||) (released PT4AL) instead of max p.

    Returns:
      (k,) distinct pool indices, none previously labeled.
    """
    del key
    labeled_mask = np.asarray(labeled_mask, bool)
    pool_size = loss_order.shape[0]
    check_query(k, labeled_mask, pool_size, probs, logits)
    cand = np.asarray(
        subpools.subpool(
            loss_order, labeled_mask, cycle=cycle, num_cycles=num_cycles, beta=1.0, min_size=k
        )
    )
    if cycle == 0:
        picks = cand[np.floor(np.arange(k) * (cand.shape[0] / k)).astype(np.int64)]
        return picks
    return np.asarray(
        sampling.least_confidence(
            probs,
            candidates_mask(cand, pool_size),
            k,
            logits=logits,
            normalize_logits=normalize_logits,
        )
    )
