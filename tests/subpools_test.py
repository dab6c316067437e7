"""Tests for bal_jax.subpools: window bounds (paper Eq. 6, 7, 10, 11) and sub-pools."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bal_jax.subpools import min_beta, subpool, subpool_bounds

SETTINGS = settings(max_examples=60, deadline=None)

pool_and_cycles = st.integers(1, 12).flatmap(lambda c: st.tuples(st.integers(c, 400), st.just(c)))
betas = st.sampled_from([0.3, 0.5, 0.8, 1.0, 1.2, 1.25, 1.5, 2.0, 2.5, 3.0])


def _np_window(cycle, n, c, beta):
    """Reference: the integers j of Eq. 6 by brute force over j, with exact rationals."""
    b = Fraction(str(beta))
    lo = Fraction(cycle * n, c) - (b - 1) * Fraction(n, 2 * c)
    hi = Fraction((cycle + 1) * n, c) + (b - 1) * Fraction(n, 2 * c)
    js = [j for j in range(n) if lo <= j < hi]
    return (js[0], js[-1] + 1) if js else None


def _np_subpool(order, labeled, start, stop, min_size):
    """Reference widening: one position left, then right, alternately, with a Python loop."""
    n = len(order)
    unl = ~labeled[order]
    side = 0
    while unl[start:stop].sum() < min_size:
        can_left, can_right = start > 0, stop < n
        if (side == 0 and can_left) or not can_right:
            start -= 1
        else:
            stop += 1
        side = 1 - side
    return order[start:stop][unl[start:stop]]


@SETTINGS
@given(pool_and_cycles)
def test_beta_one_tiles_the_order_into_equal_slices(nc):
    n, c = nc
    bounds = [subpool_bounds(i, num_cycles=c, pool_size=n, beta=1.0) for i in range(c)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    widths = [stop - start for start, stop in bounds]
    assert max(widths) - min(widths) <= 1
    assert all(math.floor(n / c) <= w <= math.ceil(n / c) for w in widths)


@SETTINGS
@given(pool_and_cycles, betas, st.data())
def test_bounds_match_the_inequality_of_eq6(nc, beta, data):
    n, c = nc
    cycle = data.draw(st.integers(0, c - 1))
    start, stop = subpool_bounds(cycle, num_cycles=c, pool_size=n, beta=beta)
    ref = _np_window(cycle, n, c, beta)
    assert (start, stop) == ref if ref else start == stop
    assert 0 <= start <= stop <= n


@SETTINGS
@given(st.integers(1, 8), st.sampled_from([1, 2, 4, 5, 8, 10, 16, 20, 25, 40]), st.integers(0, 12))
def test_width_and_overlap_follow_the_formula(c, slice_len, half):
    # N/C = slice_len and (beta-1)N/(2C) = half are integers (and beta a short decimal):
    # window c is exactly [c*N/C - half, (c+1)*N/C + half) clipped, of width beta*N/C, and
    # neighbours overlap by (beta-1)*N/C = 2*half.
    n = c * slice_len
    beta = 1 + 2 * half / slice_len
    bounds = [subpool_bounds(i, num_cycles=c, pool_size=n, beta=beta) for i in range(c)]
    for i, (lo, hi) in enumerate(bounds):
        assert (lo, hi) == (max(0, i * slice_len - half), min(n, (i + 1) * slice_len + half))
        if 0 < lo and hi < n:
            assert hi - lo == slice_len + 2 * half == pytest.approx(beta * n / c)
    for (lo_a, hi_a), (lo_b, hi_b) in itertools.pairwise(bounds):
        if lo_a > 0 and hi_b < n:
            assert hi_a - lo_b == 2 * half == pytest.approx((beta - 1) * n / c)


@SETTINGS
@given(pool_and_cycles, betas, st.data())
def test_width_is_beta_n_over_c_before_clipping(nc, beta, data):
    n, c = nc
    cycle = data.draw(st.integers(0, c - 1))
    start, stop = subpool_bounds(cycle, num_cycles=c, pool_size=n, beta=beta)
    if 0 < start and stop < n:
        assert abs((stop - start) - beta * n / c) < 1


@SETTINGS
@given(pool_and_cycles, betas, st.data())
def test_subpool_is_unlabeled_distinct_and_in_cdd_order(nc, beta, data):
    n, c = nc
    seed = data.draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    labeled = rng.random(n) < data.draw(st.sampled_from([0.0, 0.3, 0.9]))
    cycle = data.draw(st.integers(0, c - 1))
    max_size = min(int((~labeled).sum()), math.floor(beta * n / c))
    min_size = data.draw(st.integers(0, max(max_size, 0)))
    got = subpool(order, labeled, cycle=cycle, num_cycles=c, beta=beta, min_size=min_size)
    assert got.dtype == np.int32
    assert len(set(got.tolist())) == len(got) >= min_size
    assert not labeled[got].any()
    position = np.argsort(order)
    assert np.all(np.diff(position[got]) > 0)  # CDD order kept
    start, stop = subpool_bounds(cycle, num_cycles=c, pool_size=n, beta=beta)
    np.testing.assert_array_equal(got, _np_subpool(order, labeled, start, stop, min_size))


def test_widening_grows_both_sides_alternately_and_continues_at_an_end():
    order = np.arange(20)
    labeled = np.zeros(20, bool)
    labeled[8:12] = True
    # Cycle 2 of 5, beta 1: the window [8, 12) holds only labeled images; it grows to
    # position 7, then 12, then 6.
    np.testing.assert_array_equal(
        subpool(order, labeled, cycle=2, num_cycles=5, beta=1.0, min_size=3), [6, 7, 12]
    )
    # Cycle 0: the left side is at the end, so the window grows to the right only.
    labeled = np.arange(20) < 4
    np.testing.assert_array_equal(
        subpool(order, labeled, cycle=0, num_cycles=5, beta=1.0, min_size=2), [4, 5]
    )
    # The pool's own order (not index order) decides the neighbours.
    perm = np.random.default_rng(0).permutation(20)
    labeled_pool = np.zeros(20, bool)
    labeled_pool[perm[:4]] = True
    got = subpool(perm, labeled_pool, cycle=0, num_cycles=5, beta=1.0, min_size=2)
    np.testing.assert_array_equal(got, perm[4:6])


def test_released_variant_uses_budget_units():
    kw = dict(num_cycles=4, pool_size=100, variant="released", budget=10)
    assert subpool_bounds(0, beta=1.5, **kw) == (0, 15)
    assert subpool_bounds(1, beta=1.0, **kw) == (20, 30)  # centred on 2.5 A
    assert subpool_bounds(2, beta=2.0, **kw) == (25, 45)  # centred on 3.5 A
    assert subpool_bounds(3, beta=2.0, **kw) == (80, 100)
    # (k - 1)/A: one image of rounding slack (module doc).
    assert min_beta(min_size=10, num_cycles=4, pool_size=100, variant="released", budget=8) == (
        1.125
    )
    with pytest.raises(ValueError, match="budget"):
        subpool_bounds(0, beta=1.0, num_cycles=4, pool_size=100, variant="released")


def test_min_beta_and_its_error_names_the_minimum():
    assert min_beta(min_size=1000, num_cycles=5, pool_size=50_000) == pytest.approx(0.0999)
    order = np.arange(100)
    labeled = np.zeros(100, bool)
    # (k-1)*C/N = 9*5/100 = 0.45: allowed at the minimum (widened by one image), rejected below.
    assert len(subpool(order, labeled, cycle=1, num_cycles=5, beta=0.45, min_size=10)) == 10
    with pytest.raises(ValueError, match=r"below its minimum 0\.45"):
        subpool(order, labeled, cycle=1, num_cycles=5, beta=0.44, min_size=10)


@pytest.mark.parametrize(
    ("pool_size", "k"),
    [(68_257, 6_826), (7_057, 706), (9_999, 1_000)],  # SVHN, Caltech-101 large; the library case
)
def test_large_budget_rounding_shortfall_is_widened_not_refused(pool_size, k):
    # k = round(0.1 N) > N/C: k*C/N is just above 1, yet beta = 1 (uniform sub-pools, PT4AL's
    # equal batches) must run every cycle, each window widened by at most one image.
    assert k * 10 / pool_size > 1 >= min_beta(min_size=k, num_cycles=10, pool_size=pool_size)
    order = np.random.default_rng(0).permutation(pool_size)
    labeled = np.zeros(pool_size, bool)
    counts = np.diff(np.rint(np.linspace(0, 1, 11) * pool_size).astype(int))
    for cycle, k_c in enumerate(counts):
        got = subpool(order, labeled, cycle=cycle, num_cycles=10, beta=1.0, min_size=int(k_c))
        start, stop = subpool_bounds(cycle, num_cycles=10, pool_size=pool_size, beta=1.0)
        assert len(got) >= k_c and len(got) <= (stop - start) + 2
        labeled[got[:k_c]] = True
    assert labeled.all()


def _released_reference(cycle, num_cycles, n, beta, budget):
    """SPEC Step 3's released-code windows, bounds truncated by int() as its Python does."""
    if cycle == 0:
        lo, hi = 0, int(beta * budget)
    elif cycle == num_cycles - 1:
        lo, hi = int(n - beta * budget), n
    else:
        lo = int((cycle + 1.5) * budget - beta * budget / 2)
        hi = int((cycle + 1.5) * budget + beta * budget / 2)
    lo, hi = min(max(lo, 0), n), min(max(hi, 0), n)
    return lo, max(lo, hi)


@pytest.mark.parametrize(
    ("n", "num_cycles", "budget"),
    [(45_000, 5, 900), (45_000, 7, 2_250), (68_257, 10, 6_826), (7_057, 5, 141), (37, 10, 4)],
)
def test_released_windows_truncate_like_the_released_code(n, num_cycles, budget):
    betas = [round(0.4 + 0.15 * i, 2) for i in range(17)]  # 0.4 .. 2.8, odd decimals included
    for beta, cycle in itertools.product(betas, range(num_cycles)):
        got = subpool_bounds(
            cycle, num_cycles=num_cycles, pool_size=n, beta=beta, variant="released", budget=budget
        )
        assert got == _released_reference(cycle, num_cycles, n, beta, budget), (beta, cycle)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(beta=0.0), "beta"),
        (dict(beta=float("nan")), "beta"),
        (dict(beta=-1.0), "beta"),
        (dict(cycle=5), "cycle"),
        (dict(cycle=-1), "cycle"),
        (dict(num_cycles=0), "num_cycles"),
        (dict(min_size=-1), "min_size"),
        (dict(min_size=80, beta=5.0), "unlabeled"),
        (dict(variant="nope"), "variant"),
    ],
)
def test_subpool_bad_arguments(kwargs, match):
    order = np.arange(100)
    labeled = np.arange(100) < 30
    args = dict(cycle=1, num_cycles=5, beta=1.0, min_size=0) | kwargs
    with pytest.raises(ValueError, match=match):
        subpool(order, labeled, **args)


@pytest.mark.parametrize(
    ("order", "labeled", "match"),
    [
        (np.arange(10).reshape(2, 5), np.zeros(10, bool), "1-D"),
        (np.arange(10.0), np.zeros(10, bool), "integer"),
        (np.zeros(10, int), np.zeros(10, bool), "permutation"),
        (np.arange(10), np.zeros(10, int), "bool"),
        (np.arange(10), np.zeros(9, bool), "bool"),
    ],
)
def test_subpool_bad_arrays(order, labeled, match):
    with pytest.raises(ValueError, match=match):
        subpool(order, labeled, cycle=0, num_cycles=2, beta=1.0)
