"""Labeling budgets: the paper's schedules as cumulative fractions and per-cycle counts.

Usage::

    fractions = budget_fractions("small")            # (0.02, 0.04, 0.06, 0.08, 0.10)
    counts = cycle_counts(fractions, pool_size=50_000)  # (1000, 1000, 1000, 1000, 1000)
    search_cycles(budget_fractions("medium"), fraction=0.15)  # 2: the beta search's cycles
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

# Fraction of the pool labeled after each cycle (SPEC "Budget regimes").
BUDGETS: dict[str, tuple[float, ...]] = {
    "small": (0.02, 0.04, 0.06, 0.08, 0.10),
    "medium": (0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40),
    "large": tuple(round(0.1 * i, 1) for i in range(1, 11)),
}


def budget_fractions(budget: str) -> tuple[float, ...]:
    """Returns the cumulative labeled fractions of a named budget (small, medium, large)."""
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {sorted(BUDGETS)}")
    return BUDGETS[budget]


def validate_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    """Checks that fractions are strictly increasing and in (0, 1]; returns them as a tuple."""
    fr = tuple(float(f) for f in fractions)
    if not fr:
        raise ValueError("fractions must hold at least one value")
    if any(not (0.0 < f <= 1.0) for f in fr):
        raise ValueError(f"fractions must lie in (0, 1], got {fr}")
    if any(b <= a for a, b in itertools.pairwise(fr)):
        raise ValueError(f"fractions must be strictly increasing, got {fr}")
    return fr


def cycle_counts(fractions: Sequence[float], *, pool_size: int) -> tuple[int, ...]:
    """Images labeled in each cycle: k_c = round(f_c N) - round(f_{c-1} N).

    Args:
      fractions: cumulative labeled fractions after each cycle, strictly increasing.
      pool_size: N, the number of images in the pool.

    Returns:
      One count per cycle; all positive, summing to round(f_last * N).
    """
    fr = validate_fractions(fractions)
    totals = np.rint(np.asarray(fr) * pool_size).astype(np.int64)
    counts = np.diff(totals, prepend=0)
    if np.any(counts <= 0):
        bad = fr[int(np.argmax(counts <= 0))]
        raise ValueError(
            f"a pool of {pool_size} images is too small for fractions {fr}: the cycle "
            f"reaching {bad} would label no image"
        )
    return tuple(int(c) for c in counts)


def search_cycles(fractions: Sequence[float], *, fraction: float) -> int:
    """Cycles the beta search runs per candidate (paper Eq. 9: about 15% of N labeled).

    The fewest cycles whose cumulative fraction reaches `fraction`, and at least 2 when the
    schedule has 2: the first cycle takes the lowest-CDD images of the first window, the same
    for every beta >= 1, so a one-cycle search could not tell those candidates apart. A
    schedule that never reaches `fraction` (the small budget ends at 10%) is searched whole.

    Args:
      fractions: the schedule's cumulative labeled fractions.
      fraction: the labeled fraction the search should reach, in (0, 1].

    Returns:
      The number of cycles, in [1, len(fractions)]: medium 2 (15%), large 2 (20%), small 5.
    """
    fr = validate_fractions(fractions)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    reached = [i + 1 for i, f in enumerate(fr) if f >= fraction - 1e-9]
    cycles = reached[0] if reached else len(fr)
    return min(max(cycles, 2), len(fr))
