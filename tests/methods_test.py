"""Method dispatch: every method returns k distinct unlabeled indices; BAL/PT4AL specifics."""

import jax
import numpy as np
import pytest

from bal_jax import methods

N, C, K = 400, 5, 20


def _preds(rng):
    logits = rng.normal(size=(N, C)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return methods.PoolPredictions(
        probs_NC=probs.astype(np.float32),
        logits_NC=logits,
        features_ND=rng.normal(size=(N, 8)).astype(np.float32),
        mc_probs_TNC=np.stack([probs, probs[::-1]]).astype(np.float32),
    )


def _context(rng):
    feats = rng.normal(size=(N, 8)).astype(np.float32)
    losses = rng.random(N)
    return methods.SelectionContext(
        bal_order=methods.bal_order(jax.random.key(0), feats, num_clusters=C),
        pt4al_order=np.argsort(-losses, kind="stable"),
        pretext_features_ND=feats,
        beta=1.5,
    )


@pytest.mark.parametrize("method", methods.METHODS)
@pytest.mark.parametrize("cycle", [0, 2])
def test_every_method_returns_k_distinct_unlabeled(method, cycle):
    rng = np.random.default_rng(0)
    labeled = np.zeros(N, bool)
    labeled[rng.choice(N, 60, replace=False)] = cycle > 0
    picked = methods.select(
        method,
        jax.random.key(1),
        cycle=cycle,
        num_cycles=5,
        k=K,
        labeled_mask=labeled,
        context=_context(rng),
        preds=_preds(rng),
    )
    picked = np.asarray(picked)
    assert picked.shape == (K,)
    assert np.unique(picked).size == K
    assert not labeled[picked].any()
    assert picked.min() >= 0 and picked.max() < N


def test_unknown_method():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown method"):
        methods.select(
            "magic",
            jax.random.key(0),
            cycle=1,
            num_cycles=5,
            k=K,
            labeled_mask=np.zeros(N, bool),
            context=_context(rng),
            preds=_preds(rng),
        )


def test_bal_first_cycle_is_the_head_of_the_cdd_order():
    rng = np.random.default_rng(1)
    ctx = _context(rng)
    picked = methods.bal_select(
        jax.random.key(0),
        order=ctx.bal_order,
        labeled_mask=np.zeros(N, bool),
        cycle=0,
        num_cycles=5,
        k=K,
        beta=2.0,
    )
    np.testing.assert_array_equal(picked, ctx.bal_order[:K])


def test_bal_later_cycle_picks_least_confident_inside_its_window():
    rng = np.random.default_rng(2)
    ctx = _context(rng)
    preds = _preds(rng)
    labeled = np.zeros(N, bool)
    labeled[ctx.bal_order[:K]] = True
    picked = methods.bal_select(
        jax.random.key(0),
        order=ctx.bal_order,
        labeled_mask=labeled,
        cycle=1,
        num_cycles=5,
        k=K,
        beta=1.0,
        probs=preds.probs_NC,
    )
    window = ctx.bal_order[N // 5 : 2 * N // 5]  # beta = 1: the second of five equal slices
    conf = preds.probs_NC[window].max(1)
    expected = window[np.argsort(conf, kind="stable")[:K]]
    np.testing.assert_array_equal(np.sort(picked), np.sort(expected))


def test_pt4al_first_cycle_even_intervals_of_first_batch():
    losses = np.arange(N, dtype=np.float64)  # descending loss order = N-1, N-2, ...
    order = np.argsort(-losses, kind="stable")
    picked = methods.pt4al_select(
        jax.random.key(0),
        loss_order=order,
        labeled_mask=np.zeros(N, bool),
        cycle=0,
        num_cycles=4,
        k=10,
    )
    np.testing.assert_array_equal(picked, order[: N // 4][::10])


def test_pt4al_order_is_numeric():
    # The released code sorted '9.99e-05' above '4.41' as strings.
    losses = np.array([9.99e-05, 4.41, 0.5])
    np.testing.assert_array_equal(np.argsort(-losses, kind="stable"), [1, 2, 0])


def test_bal_order_indicators():
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(N, 4)).astype(np.float32)
    losses = rng.random(N)
    order = methods.bal_order(
        jax.random.key(0), feats, num_clusters=3, indicator="pretext_loss", pretext_losses_N=losses
    )
    np.testing.assert_array_equal(order, np.argsort(losses, kind="stable"))
    desc = methods.bal_order(jax.random.key(0), feats, num_clusters=3, descending=True)
    asc = methods.bal_order(jax.random.key(0), feats, num_clusters=3)
    assert sorted(desc) == sorted(asc) == list(range(N))
    with pytest.raises(ValueError, match="indicator"):
        methods.bal_order(jax.random.key(0), feats, num_clusters=3, indicator="bogus")


def test_bal_min_beta_per_window_variant():
    counts = (100, 50, 50)
    # (k-1)*C/N and (k-1)/A: one image of rounding slack (subpools module doc).
    assert methods.bal_min_beta(counts, pool_size=1000) == pytest.approx(99 * 3 / 1000)
    released = methods.BALOptions(window_variant="released", window_budget=50)
    assert methods.bal_min_beta(counts, pool_size=1000, options=released) == pytest.approx(99 / 50)
    with pytest.raises(ValueError, match="window_budget"):
        methods.bal_min_beta(counts, pool_size=1000, options=released._replace(window_budget=None))


def test_bal_select_released_windows_use_the_fixed_budget_not_k():
    # Medium budget: the second cycle labels k = 50 but A stays 100 (the released --addendum).
    order = np.arange(N)
    labeled = np.zeros(N, bool)
    labeled[:100] = True
    options = methods.BALOptions(window_variant="released", window_budget=100, sampler="random")
    picked = methods.bal_select(
        jax.random.key(0),
        order=order,
        labeled_mask=labeled,
        cycle=1,
        num_cycles=4,
        k=50,
        beta=1.0,
        options=options,
    )
    assert set(picked) <= set(range(200, 300))  # int(2.5*100 -/+ 50): S[200:300]
    with pytest.raises(ValueError, match="budget"):
        methods.bal_select(
            jax.random.key(0),
            order=order,
            labeled_mask=labeled,
            cycle=1,
            num_cycles=4,
            k=50,
            beta=1.0,
            options=options._replace(window_budget=None),
        )


def test_bal_select_large_budget_at_beta_one_runs_every_cycle():
    # N = 9,999, C = 10, k = 1,000: k*C/N = 1.0001, a rounding shortfall, not an error.
    n = 9_999
    labeled = np.zeros(n, bool)
    order = np.random.default_rng(0).permutation(n)
    counts = np.diff(np.rint(np.linspace(0, 1, 11) * n).astype(int))
    assert counts.max() == 1000
    for cycle, k in enumerate(counts):
        picked = methods.bal_select(
            jax.random.key(cycle),
            order=order,
            labeled_mask=labeled,
            cycle=cycle,
            num_cycles=10,
            k=int(k),
            beta=1.0,
            probs=np.full((n, 10), 0.1, np.float32),
        )
        labeled[picked] = True
    assert labeled.all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(k=500), r"k=500 must be in \[1, 340\], the unlabeled images"),
        (
            dict(probs=np.ones((N - 1, C), np.float32)),
            r"probs must have shape \(400, num_classes\)",
        ),
        (dict(logits=np.ones((N, C, 1), np.float32)), r"logits must have shape"),
    ],
)
def test_bal_select_names_the_bad_argument(kwargs, match):
    labeled = np.arange(N) < 60
    args = dict(order=np.arange(N), labeled_mask=labeled, cycle=1, num_cycles=5, k=10, beta=1.2)
    with pytest.raises(ValueError, match=match):
        methods.bal_select(jax.random.key(0), **(args | kwargs))


def test_pt4al_ranks_by_normalised_logits_like_the_released_code():
    rng = np.random.default_rng(5)
    logits = (rng.normal(size=(N, C)) * rng.uniform(0.1, 10, size=(N, 1))).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    order = np.arange(N)
    labeled = np.zeros(N, bool)
    labeled[:10] = True
    kw = dict(loss_order=order, labeled_mask=labeled, cycle=1, num_cycles=4, k=20)
    released = methods.pt4al_select(jax.random.key(0), probs=probs, logits=logits, **kw)
    z = logits / np.linalg.norm(logits, axis=1, keepdims=True)
    conf = (np.exp(z) / np.exp(z).sum(1, keepdims=True)).max(1)
    batch = np.arange(100, 200)  # cycle 1's equal batch of the loss order
    np.testing.assert_array_equal(np.sort(released), np.sort(batch[np.argsort(conf[batch])[:20]]))
    plain = methods.pt4al_select(
        jax.random.key(0), probs=probs, logits=logits, normalize_logits=False, **kw
    )
    np.testing.assert_array_equal(
        np.sort(plain), np.sort(batch[np.argsort(probs[batch].max(1))[:20]])
    )
    assert set(plain) != set(released)
