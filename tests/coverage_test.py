"""ProbCover and MaxHerding (bal_jax.coverage): hand-computed greedy picks, the purity rule for
delta, the bandwidth rule for sigma, and the dispatch through `methods.select`."""

import jax
import numpy as np
import pytest

from bal_jax import coverage, methods

# 1-D pool: clusters {0, 1, 2} and {10, 11} and a lone point 20 (indices 0..5).
LINE = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [20.0]], np.float32)
# 1-D pool for the Gaussian: {0, 1, 2}, the denser {10, 11, 11.5} and 20 (indices 0..6).
HERD = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [11.5], [20.0]], np.float32)


def _mask(n, idx=()):
    mask = np.zeros(n, bool)
    mask[list(idx)] = True
    return mask


def _greedy_reference(x, labeled, k, affinity, min_gain=-np.inf):
    """Plain NumPy greedy coverage: full gains every step, argmax (lowest index on ties),
    stopping early once no gain reaches `min_gain`."""
    a = affinity(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    c = a[:, labeled].max(1) if labeled.any() else np.zeros(len(x))
    free, picks = ~labeled, []
    for _ in range(k):
        gain = np.where(free, np.maximum(a - c[None, :], 0).sum(1), -np.inf)
        p = int(np.argmax(gain))
        if gain[p] < min_gain:
            break
        picks.append(p)
        free[p] = False
        c = np.maximum(c, a[p])
    return picks, c.sum()


def _probcover(x, labeled, k, delta, key=0):
    picked = coverage.probcover(jax.random.key(key), x, labeled, k, delta=delta, normalize=False)
    return np.asarray(picked).tolist()


# ---------------------------------------------------------------------------------------------
# ProbCover.


@pytest.mark.parametrize(
    "labeled, k, expected",
    [
        # Balls (radius 1.5): 1 holds {0, 1, 2}; 3 and 4 hold {3, 4} (tie: lowest index); 5 {5}.
        ((), 3, [1, 3, 5]),
        # Image 1 labeled: {0, 1, 2} is covered from the start.
        ((1,), 2, [3, 5]),
        # Image 3 labeled: {3, 4} is covered; 1 still covers three.
        ((3,), 2, [1, 5]),
    ],
)
def test_probcover_greedy_by_hand(labeled, k, expected):
    assert _probcover(LINE, _mask(6, labeled), k, delta=1.5) == expected


def test_probcover_radius_is_strict():
    # delta = 1 exactly: every ball holds only its centre, all gains are 1, lowest index first.
    assert _probcover(LINE, _mask(6), 3, delta=1.0) == [0, 1, 2]


def test_probcover_falls_back_to_random_once_everything_is_covered():
    # After 1, 3, 5 the pool is covered; the two further picks are random among 0, 2, 4.
    tails = set()
    for key in range(8):
        picked = _probcover(LINE, _mask(6), 5, delta=1.5, key=key)
        assert picked[:3] == [1, 3, 5]
        assert set(picked[3:]) <= {0, 2, 4} and len(set(picked)) == 5
        tails.add(tuple(picked[3:]))
    assert len(tails) > 1
    # Labeled 1, 3 and 5 already cover everything: all picks are the random fallback.
    assert sorted(_probcover(LINE, _mask(6, (1, 3, 5)), 3, delta=1.5)) == [0, 2, 4]


@pytest.mark.parametrize("num_labeled", [0, 150])
def test_probcover_matches_numpy_greedy(num_labeled):
    # 300 points > the 128-column blocks, labeled points in two blocks.
    rng = np.random.default_rng(num_labeled)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labeled = _mask(300, rng.choice(300, num_labeled, replace=False))
    delta = 0.3
    ball = lambda d2: (d2 < delta**2) * 1.0  # noqa: E731
    expected, _ = _greedy_reference(x, labeled.copy(), 40, ball, min_gain=1)
    picked = coverage.probcover(jax.random.key(0), x, labeled, 40, delta=delta)
    assert 0 < len(expected) <= 40
    assert np.asarray(picked)[: len(expected)].tolist() == expected


def test_probcover_normalises_the_features():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3)).astype(np.float32)
    scaled = x * rng.uniform(0.5, 3.0, size=(50, 1)).astype(np.float32)
    a = coverage.probcover(jax.random.key(0), x, _mask(50), 10, delta=0.5)
    b = coverage.probcover(jax.random.key(0), scaled, _mask(50), 10, delta=0.5)
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# The purity rule for delta.


def test_ball_purity_by_hand():
    # Nearest point of the other label: 0 -> 10, 1 -> 9, 2 -> 8, 10 -> 8, 11 -> 9.
    x = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]], np.float32)
    purity = coverage.ball_purity(x, [0, 0, 0, 1, 1], [2.0, 8.0, 8.5, 9.0, 9.5, 10.0, 10.5])
    np.testing.assert_allclose(purity, [1.0, 1.0, 0.6, 0.6, 0.2, 0.2, 0.0])


def test_ball_purity_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 120)
    deltas = np.linspace(0.1, 2.0, 7)
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    other = np.where(labels[:, None] != labels[None, :], d, np.inf).min(1)
    expected = [(other >= delta).mean() for delta in deltas]
    np.testing.assert_allclose(coverage.ball_purity(x, labels, deltas), expected, atol=1e-6)


@pytest.mark.parametrize(
    "alpha, grid, expected",
    [
        (0.95, (2.0, 8.0, 8.5, 9.0, 9.5, 10.0, 10.5), 8.0),
        (0.6, (2.0, 8.0, 8.5, 9.0, 9.5, 10.0, 10.5), 9.0),
        (0.2, (2.0, 8.0, 8.5, 9.0, 9.5, 10.0, 10.5), 10.0),
        (0.95, (10.5, 11.0), 10.5),  # no radius is pure enough: the smallest
    ],
)
def test_choose_delta_by_hand(alpha, grid, expected):
    # K-means with K = 2 finds {0, 1, 2} and {10, 11}; purities as in test_ball_purity_by_hand.
    x = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]], np.float32)
    delta = coverage.choose_delta(jax.random.key(0), x, 2, alpha=alpha, grid=grid, normalize=False)
    assert delta == expected


def test_choose_delta_default_grid_on_the_sphere():
    # Two tight, antipodal clusters: every radius up to 1.9 is pure, 2.0 reaches across.
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal([5, 0], 0.01, (20, 2)), rng.normal([-5, 0], 0.01, (20, 2))])
    assert coverage.choose_delta(jax.random.key(0), x.astype(np.float32), 2) == 1.95


# ---------------------------------------------------------------------------------------------
# MaxHerding.


def _herd(x, labeled, k, sigma, **kw):
    picked = coverage.maxherding(x, labeled, k, sigma=sigma, normalize=False, **kw)
    return np.asarray(picked).tolist()


def test_maxherding_greedy_by_hand():
    # sigma = 1, cross-cluster kernel values below e^-32. Coverage gains of a first pick:
    # 11: 1 + e^-.5 + e^-.125 = 2.489 (the most), 1: 1 + 2 e^-.5 = 2.213, 11.5: 2.207.
    # With 11 in L the gain of 1 is still 2.213 while 10 adds 1 - e^-.5 = 0.393 and 11.5
    # adds 1 - e^-.125 = 0.118; then the lone 20 adds 1.0, more than 0, 2 or 10 (0.393).
    assert _herd(HERD, _mask(7), 3, sigma=1.0) == [4, 1, 6]


def test_maxherding_labeled_points_start_in_l():
    # 11 (index 4) labeled: 1 comes first, then 20.
    assert _herd(HERD, _mask(7, (4,)), 2, sigma=1.0) == [1, 6]


@pytest.mark.parametrize("num_labeled", [0, 150])
def test_maxherding_matches_numpy_greedy(num_labeled):
    rng = np.random.default_rng(10 + num_labeled)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labeled = _mask(300, rng.choice(300, num_labeled, replace=False))
    sigma = 0.4
    expected, best = _greedy_reference(
        x.astype(np.float64), labeled.copy(), 20, lambda d2: np.exp(-d2 / (2 * sigma**2))
    )
    picked = np.asarray(coverage.maxherding(x, labeled, 20, sigma=sigma))
    # Equal gains may resolve either way in float32: compare the coverage reached, and the
    # picks up to the first such tie.
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1).astype(np.float64)
    reached = np.exp(-d2[:, np.r_[np.flatnonzero(labeled), picked]] / (2 * sigma**2)).max(1)
    np.testing.assert_allclose(reached.sum(), best, rtol=1e-5)
    assert picked[0] == expected[0]


def test_weighted_candidate_herding_by_hand():
    # Weight 0 on the dense {10, 11, 11.5} (indices 3-5): covering it is worth nothing, so the
    # first pick is 1 (1 + 2 e^-.5 = 2.213), then the lone 20 (1.0) over 0 or 2 (0.393).
    weights = np.array([1, 1, 1, 0, 0, 0, 1], np.float32)
    assert _herd(HERD, _mask(7), 2, sigma=1.0, weights=weights) == [1, 6]
    # Picks only among the candidates 0, 3, 5, 6 (not 11, the best overall): 11.5 first
    # (1 + e^-.125 + e^-1.125 = 2.207, against 1.931 for 10 and 1.742 for 0), then 0 (1.742,
    # while 10 now adds only 1 - e^-1.125 = 0.675), then 20 (1.0).
    cand = _mask(7, (0, 3, 5, 6))
    assert _herd(HERD, _mask(7), 3, sigma=1.0, candidates=cand) == [5, 0, 6]
    # Uniform weights change nothing; scaling them all changes nothing.
    for w in (np.ones(7), np.full(7, 0.25)):
        assert _herd(HERD, _mask(7), 3, sigma=1.0, weights=w) == [4, 1, 6]


@pytest.mark.parametrize("num_labeled", [0, 60])
def test_weighted_candidate_herding_matches_numpy_greedy(num_labeled):
    rng = np.random.default_rng(30 + num_labeled)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labeled = _mask(200, rng.choice(200, num_labeled, replace=False))
    cand = rng.random(200) < 0.4
    w = rng.random(200).astype(np.float32)
    sigma = 0.5
    got = coverage.maxherding(x, labeled, 15, sigma=sigma, candidates=cand, weights=w)
    got = np.asarray(got)
    a = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1).astype(np.float64) / (2 * sigma**2))
    c = a[:, labeled].max(1) if labeled.any() else np.zeros(200)
    free = cand & ~labeled
    assert free[got].all() and np.unique(got).size == 15
    for p in got:  # each pick has the largest weighted gain of the free candidates, to rounding
        gain = np.where(free, (w[None, :] * np.maximum(a - c[None, :], 0)).sum(1), -np.inf)
        assert gain[p] >= gain.max() - 1e-4
        free[p] = False
        c = np.maximum(c, a[p])


def test_default_sigma_is_the_median_nearest_neighbour_distance():
    # Nearest-neighbour distances 1, 1, 2, 4: median 1.5.
    x = np.array([[0.0], [1.0], [3.0], [7.0]], np.float32)
    assert coverage.default_sigma(x, normalize=False) == pytest.approx(1.5)
    # Exact duplicates (distance 0) are left out: 1, 2 -> 1.5; all duplicates -> 1.0.
    dup = np.array([[0.0], [0.0], [1.0], [3.0]], np.float32)
    assert coverage.default_sigma(dup, normalize=False) == pytest.approx(1.5)
    assert coverage.default_sigma(np.zeros((3, 2), np.float32), normalize=False) == 1.0


# ---------------------------------------------------------------------------------------------
# Shared contract and dispatch.


@pytest.mark.parametrize("method", ["probcover", "maxherding"])
@pytest.mark.parametrize("num_labeled", [0, 40])
def test_k_picks_distinct_and_unlabeled(method, num_labeled):
    rng = np.random.default_rng(num_labeled)
    feats = rng.normal(size=(200, 6)).astype(np.float32)
    labeled = _mask(200, rng.choice(200, num_labeled, replace=False))
    k = 200 - num_labeled  # every unlabeled image: ProbCover runs out and falls back
    picked = np.asarray(
        coverage.select(method, jax.random.key(0), feats, labeled, k, delta=0.8, sigma=0.5)
    )
    assert picked.shape == (k,)
    assert np.unique(picked).size == k
    assert not labeled[picked].any()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: coverage.maxherding(LINE, _mask(6, (0, 1)), 5, sigma=1.0), "k=5"),
        (lambda: coverage.probcover(jax.random.key(0), LINE, _mask(6), 2, delta=0.0), "delta"),
        (lambda: coverage.maxherding(LINE, _mask(6), 2, sigma=float("nan")), "sigma"),
        (
            lambda: coverage.maxherding(LINE, _mask(6), 3, sigma=1.0, candidates=_mask(6, (1, 2))),
            "2 unlabeled candidates",
        ),
        (
            lambda: coverage.maxherding(LINE, _mask(6), 2, sigma=1.0, candidates=np.ones(6)),
            "candidates must be a",
        ),
        (
            lambda: coverage.maxherding(LINE, _mask(6), 2, sigma=1.0, weights=-np.ones(6)),
            "weights must be 6 finite",
        ),
        (
            lambda: coverage.maxherding(LINE, _mask(6), 2, sigma=1.0, weights=np.ones(5)),
            "weights must be 6 finite",
        ),
        (lambda: coverage.choose_delta(jax.random.key(0), LINE, 2, alpha=0.0), "alpha"),
        (lambda: coverage.choose_delta(jax.random.key(0), LINE, 2, grid=()), "grid"),
        (lambda: coverage.select("probcover", jax.random.key(0), None, _mask(6), 2), "pretext"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_registered_as_hot_start_pretext_methods():
    for method in ("probcover", "maxherding"):
        assert method in methods.METHODS
        assert method in methods.HOT_START
        assert method in methods.NEEDS_PRETEXT
        assert method not in methods.NEEDS_PROBS


def _assert_greedy_balls(feats, labeled, picks, delta):
    """Each pick covered as many new points as any unlabeled image could at its step (on
    L2-normalised features, as probcover sees them); which of equal ones is free."""
    x = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    ball = ((x[:, None] - x[None]) ** 2).sum(-1) < delta * delta
    covered = ball[:, labeled].any(1) if labeled.any() else np.zeros(len(x), bool)
    free = ~labeled
    assert len(set(np.asarray(picks).tolist())) == len(picks) and free[picks].all()
    for p in np.asarray(picks):
        gain = np.where(free, (ball & ~covered[None, :]).sum(1), -1)
        assert gain[p] == gain.max() or gain.max() == 0
        free[p] = False
        covered |= ball[p]


def test_probcover_through_select_breaks_equal_balls_at_random():
    """With balls that hold only their centre every gain is 1: `select` then picks at random
    (seeded), where `probcover`'s lowest-index rule would take the first k in file order."""
    feats = np.eye(40, dtype=np.float32)  # unit vectors 1.41 apart: delta 0.5 balls are single
    labeled = _mask(40)
    kw = dict(cycle=0, num_cycles=2, k=8, labeled_mask=labeled, preds=methods.PoolPredictions())
    ctx = methods.SelectionContext(pretext_features_ND=feats, probcover_delta=0.5)
    picks = [methods.select("probcover", jax.random.key(s), context=ctx, **kw) for s in (0, 1)]
    np.testing.assert_array_equal(
        coverage.probcover(jax.random.key(0), feats, labeled, 8, delta=0.5), range(8)
    )
    assert sorted(picks[0].tolist()) != list(range(8))
    assert picks[0].tolist() != picks[1].tolist()
    np.testing.assert_array_equal(
        picks[0], methods.select("probcover", jax.random.key(0), context=ctx, **kw)
    )


@pytest.mark.parametrize("cycle", [0, 1])
def test_dispatch_through_methods_select(cycle):
    rng = np.random.default_rng(cycle)
    feats = rng.normal(size=(150, 5)).astype(np.float32)
    labeled = _mask(150, rng.choice(150, 30, replace=False) if cycle else ())
    key = jax.random.key(3)
    common = dict(cycle=cycle, num_cycles=3, k=12, labeled_mask=labeled)
    preds = methods.PoolPredictions()  # neither method uses the main model

    # Values from the context...
    ctx = methods.SelectionContext(
        pretext_features_ND=feats, probcover_delta=0.7, maxherding_sigma=0.3
    )
    got = methods.select("probcover", key, context=ctx, preds=preds, **common)
    _assert_greedy_balls(feats, labeled, got, 0.7)
    got = methods.select("maxherding", key, context=ctx, preds=preds, **common)
    np.testing.assert_array_equal(got, coverage.maxherding(feats, labeled, 12, sigma=0.3))

    # ... or computed from the features: the purity rule (fixed key) and the 1-NN median.
    ctx = methods.SelectionContext(pretext_features_ND=feats, probcover_clusters=4)
    delta = coverage.choose_delta(jax.random.key(0), feats, 4)
    got = methods.select("probcover", key, context=ctx, preds=preds, **common)
    _assert_greedy_balls(feats, labeled, got, delta)
    sigma = coverage.default_sigma(feats)
    got = methods.select("maxherding", key, context=ctx, preds=preds, **common)
    np.testing.assert_array_equal(got, coverage.maxherding(feats, labeled, 12, sigma=sigma))
