"""Adaptive sub-pools over the CDD order (paper Eq. 6, 7, 10, 11; SPEC Step 3).

Usage::

    order_N = np.asarray(cdd_order(feats_ND, centers_KD))          # S
    cand = subpool(order_N, labeled_N, cycle=c, num_cycles=C, beta=1.2, min_size=k_c)

Cycles are 0-based here: code cycle ``c`` is the paper's ``i = c + 1``. Cycle c draws from
the positions ``j`` of S with

    c*N/C - (beta-1)*N/(2C) <= j < (c+1)*N/C + (beta-1)*N/(2C),   clipped to [0, N),

a window of width beta*N/C centred on the c-th of C equal slices (Eq. 7). beta = 1 tiles S
(Eq. 11), beta > 1 overlaps neighbours by (beta-1)*N/C, beta < 1 leaves gaps (Eq. 10). The
integer bounds are the exact solutions of the inequalities (ceil of each real bound) in
rational arithmetic, with beta read as the nearest fraction of denominator <= 1e9 (``1.2`` is
6/5, not the nearest double), so beta = 1 tiles exactly and integer bounds are exact.

Variant ``"released"`` (the authors' code): windows of width beta*A in units of a fixed
per-cycle budget A (`budget`, the released code's ``--addendum``): cycle 0 is
``S[0 : int(beta*A)]``, a middle cycle c is
``S[int((c + 1.5)*A - beta*A/2) : int((c + 1.5)*A + beta*A/2)]``, the last cycle is
``S[int(N - beta*A) : N]``. Bounds are truncated with Python's ``int()`` in float arithmetic,
exactly as the released code computes them (not rounded up), then clipped to [0, N].

Minimum beta (SPEC Step 3): a window must hold the cycle's k images, beta >= k*C/N (or
k/A). With k = round(f*N) a window of the nominal width N/C can fall short of k by a rounding
of less than one image (SVHN's pool of 68,257 in 10 cycles: k = 6,826 > N/C = 6,825.7), so
the refusal threshold is ``(k - ROUNDING_SLACK)*C/N``: a shortfall of at most one image is
absorbed by the documented widening rule instead of failing the large budget at beta = 1.

The sub-pool's length depends on the data, so these are host (NumPy) functions; they are
vectorised (no Python loop over the pool) and take a few milliseconds at N = 1,000,000.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

__all__ = ["ROUNDING_SLACK", "min_beta", "subpool", "subpool_bounds"]

VARIANTS = ("paper", "released")
# Images a window may lack because k = round(f*N) exceeds its real width (module doc).
ROUNDING_SLACK = 1


def _check_int(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _beta_fraction(beta) -> Fraction:
    try:
        value = float(beta)
    except (TypeError, ValueError):
        raise ValueError(f"beta must be a number, got {beta!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    # The nearest fraction with a denominator <= 1e9: 1.2 and 1 + 1/5 (1.2000000000000002)
    # both become 6/5, so float noise cannot move a bound that should be an integer.
    return Fraction(value).limit_denominator(10**9)


def _check_variant(variant: str, budget) -> int | None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant == "released":
        if budget is None:
            raise ValueError("variant='released' needs the per-cycle budget A (budget=...)")
        return _check_int(budget, "budget", 1)
    return None


def _min_beta_fraction(min_size: int, num_cycles: int, pool_size: int, variant, budget):
    need = max(min_size - ROUNDING_SLACK, 0)
    if variant == "released":
        return Fraction(need, budget)
    return Fraction(need * num_cycles, pool_size)


def min_beta(
    *,
    min_size: int,
    num_cycles: int,
    pool_size: int,
    variant: str = "paper",
    budget: int | None = None,
) -> float:
    """The smallest beta accepted for windows that must hold `min_size` images (SPEC Step 3).

    A window is beta*N/C wide (paper) or beta*A wide (released), so the paper's minimum is
    ``k*C/N`` (or ``k/A``). A rounding shortfall of up to `ROUNDING_SLACK` image is left to
    the widening rule, so the value returned is ``(k - 1)*C/N`` (or ``(k - 1)/A``).

    Args:
      min_size: images a window must hold (the per-cycle budget k).
      num_cycles: C >= 1.
      pool_size: N >= 1.
      variant: "paper" or "released".
      budget: per-cycle budget A (variant "released" only).

    Returns:
      The minimum beta as a float.
    """
    min_size = _check_int(min_size, "min_size", 0)
    num_cycles = _check_int(num_cycles, "num_cycles", 1)
    pool_size = _check_int(pool_size, "pool_size", 1)
    budget = _check_variant(variant, budget)
    return float(_min_beta_fraction(min_size, num_cycles, pool_size, variant, budget))


def subpool_bounds(
    cycle: int,
    *,
    num_cycles: int,
    pool_size: int,
    beta: float,
    variant: str = "paper",
    budget: int | None = None,
) -> tuple[int, int]:
    """Positions [start, stop) of cycle `cycle`'s window in the CDD order (paper Eq. 6, 7).

    Args:
      cycle: 0-based cycle c in [0, num_cycles); the paper's i = c + 1.
      num_cycles: C >= 1.
      pool_size: N >= 1.
      beta: balancing factor > 0.
      variant: "paper" (width beta*N/C) or "released" (width beta*A, see module doc).
      budget: per-cycle budget A, required by variant "released".

    Returns:
      (start, stop) Python ints with 0 <= start <= stop <= N: the window is
      ``order[start:stop]``.
    """
    num_cycles = _check_int(num_cycles, "num_cycles", 1)
    pool_size = _check_int(pool_size, "pool_size", 1)
    cycle = _check_int(cycle, "cycle", 0)
    if cycle >= num_cycles:
        raise ValueError(f"cycle must be in [0, {num_cycles}), got {cycle}")
    b = _beta_fraction(beta)
    budget = _check_variant(variant, budget)
    n, c = pool_size, cycle
    if variant == "paper":
        half = (b - 1) * Fraction(n, 2 * num_cycles)
        lo = Fraction(c * n, num_cycles) - half
        hi = Fraction((c + 1) * n, num_cycles) + half
        # Integers j with lo <= j < hi are ceil(lo) .. ceil(hi) - 1.
        start, stop = math.ceil(lo), math.ceil(hi)
    else:
        start, stop = _released_bounds(c, num_cycles, n, float(beta), budget)
    start = min(max(start, 0), n)
    stop = min(max(stop, 0), n)
    return start, max(start, stop)


def _released_bounds(c: int, num_cycles: int, n: int, beta: float, budget: int):
    """The released code's slice bounds, truncated with int() in float arithmetic."""
    if c == 0:
        return 0, int(beta * budget)
    if c == num_cycles - 1:
        return int(n - beta * budget), n
    return int((c + 1.5) * budget - beta * budget / 2), int((c + 1.5) * budget + beta * budget / 2)


def _widen(unlabeled_S: np.ndarray, start: int, stop: int, need: int) -> tuple[int, int]:
    """Grows [start, stop) by one position at a time, left first, then right, alternately.

    When one side reaches the end of the order the other side keeps growing. Stops as soon as
    `need` more unlabeled positions are inside.
    """
    n = unlabeled_S.shape[0]
    left = np.arange(start - 1, -1, -1)
    right = np.arange(stop, n)
    m = min(left.shape[0], right.shape[0])
    both = np.empty(2 * m, np.int64)
    both[0::2], both[1::2] = left[:m], right[:m]
    steps = np.concatenate([both, left[m:], right[m:]])
    gained = np.cumsum(unlabeled_S[steps])
    num_steps = int(np.searchsorted(gained, need)) + 1  # first step reaching `need`
    added = steps[:num_steps]
    return min(start, int(added.min())), max(stop, int(added.max()) + 1)


def subpool(
    order: np.ndarray,
    labeled_mask: np.ndarray,
    *,
    cycle: int,
    num_cycles: int,
    beta: float,
    min_size: int = 0,
    variant: str = "paper",
    budget: int | None = None,
) -> np.ndarray:
    """The sub-pool D_i: unlabeled images of cycle `cycle`'s window, in CDD order (Eq. 6).

    If fewer than `min_size` unlabeled images remain in the window, the window is widened
    symmetrically (one position to the left, then one to the right, alternately; at an end
    of the order only the other side grows) until it holds `min_size` unlabeled images. (The
    released code labeled fewer images instead.)

    Args:
      order: (N,) int permutation of range(N), the pool sorted by ascending CDD (S).
      labeled_mask: (N,) bool, True where an image is already labeled (L_{i-1}); indexed by
        pool index, not by position in `order`.
      cycle: 0-based cycle c (the paper's i = c + 1).
      num_cycles: C.
      beta: balancing factor; must be >= `min_beta` ((min_size-1)*C/N, or (min_size-1)/A).
      min_size: unlabeled images the sub-pool must hold (the cycle's budget k).
      variant: "paper" or "released" (see module doc).
      budget: per-cycle budget A for variant "released".

    Returns:
      (M,) int32 pool indices, M >= min_size, distinct, none labeled, in the order of `order`.

    Raises:
      ValueError: bad shapes/dtypes, `order` not a permutation, beta <= 0 or below the
        minimum, fewer than `min_size` unlabeled images in the whole pool.
    """
    order = np.asarray(order)
    labeled_mask = np.asarray(labeled_mask)
    if order.ndim != 1 or not np.issubdtype(order.dtype, np.integer):
        raise ValueError(f"order must be a 1-D integer array, got {order.dtype} {order.shape}")
    n = order.shape[0]
    if labeled_mask.shape != (n,) or labeled_mask.dtype != np.bool_:
        raise ValueError(
            f"labeled_mask must be a ({n},) bool array, got {labeled_mask.dtype} "
            f"{labeled_mask.shape}"
        )
    if n == 0:
        raise ValueError("the pool is empty")
    if order.min() < 0 or order.max() >= n or not np.all(np.bincount(order, minlength=n) == 1):
        raise ValueError("order must be a permutation of range(N)")
    min_size = _check_int(min_size, "min_size", 0)
    num_cycles = _check_int(num_cycles, "num_cycles", 1)
    b = _beta_fraction(beta)
    budget = _check_variant(variant, budget)
    unlabeled_S = ~labeled_mask[order]
    num_unlabeled = int(unlabeled_S.sum())
    if num_unlabeled < min_size:
        raise ValueError(
            f"min_size={min_size} exceeds the {num_unlabeled} unlabeled images left in the pool"
        )
    lowest = _min_beta_fraction(min_size, num_cycles, n, variant, budget)
    if b < lowest:
        formula = (
            "(min_size-1)/budget" if variant == "released" else "(min_size-1)*num_cycles/pool_size"
        )
        raise ValueError(
            f"beta={beta} is below its minimum {float(lowest):.6g} = {formula} "
            f"(min_size={min_size}, num_cycles={num_cycles}, pool_size={n}, budget={budget})"
        )
    start, stop = subpool_bounds(
        cycle, num_cycles=num_cycles, pool_size=n, beta=beta, variant=variant, budget=budget
    )
    have = int(unlabeled_S[start:stop].sum())
    if have < min_size:
        start, stop = _widen(unlabeled_S, start, stop, min_size - have)
    return order[start:stop][unlabeled_S[start:stop]].astype(np.int32)


def window_mask(
    order: np.ndarray,
    labeled_mask: np.ndarray,
    *,
    cycle: int,
    num_cycles: int,
    beta: float,
    k: int,
    variant: str = "paper",
) -> np.ndarray:
    """(N,) bool, True on `subpool`'s D_i for a cycle that labels k images (the budget A of
    the released windows is k): the candidates of the BAL variants that pick in D_i their
    own way (bal_jax.typical, bal_jax.bal_cover)."""
    cand = subpool(
        order,
        labeled_mask,
        cycle=cycle,
        num_cycles=num_cycles,
        beta=beta,
        min_size=k,
        variant=variant,
        budget=k,
    )
    return candidates_mask(cand, np.shape(labeled_mask)[0])


def candidates_mask(idx: np.ndarray, size: int) -> np.ndarray:
    """(size,) bool, True at the pool indices `idx` (a sub-pool as a mask)."""
    mask = np.zeros(size, bool)
    mask[idx] = True
    return mask
