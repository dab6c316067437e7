"""BAL-typical: its selection logic against a NumPy reference, and properties of its picks."""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bal_jax import diversity, methods, subpools, typical
from bal_jax.bal_cover import bal_cover_select


def _reference_round_robin(assign, labeled, cand, score, k, min_size):
    """Plain-Python statement of the rule: visit clusters (big ones first, fewest labeled,
    largest, lowest id), each visit takes the best remaining candidate (score desc, index asc)."""
    clusters = sorted(
        set(assign.tolist()),
        key=lambda c: (
            (assign == c).sum() <= min_size,
            (labeled & (assign == c)).sum(),
            -(assign == c).sum(),
            c,
        ),
    )
    remaining = {int(i) for i in np.flatnonzero(cand)}
    picks = []
    while len(picks) < k:
        for c in clusters:
            mine = [i for i in remaining if assign[i] == c]
            if mine and len(picks) < k:
                best = min(mine, key=lambda i: (-score[i], i))
                picks.append(best)
                remaining.remove(best)
    return np.asarray(picks)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(10, 60),
    num_clusters=st.integers(1, 8),
    k=st.integers(1, 10),
    seed=st.integers(0, 10_000),
    min_size=st.integers(0, 6),
)
def test_round_robin_matches_reference_and_is_distinct_unlabeled_exactly_k(
    n, num_clusters, k, seed, min_size
):
    rng = np.random.default_rng(seed)
    assign = rng.integers(0, num_clusters, n)
    assign[:num_clusters] = np.arange(num_clusters) % n  # every cluster id used
    labeled = rng.random(n) < 0.3
    cand = ~labeled & (rng.random(n) < 0.7)
    if cand.sum() < k:
        cand = ~labeled
    k = min(k, int(cand.sum()))
    if k == 0:
        return
    score = rng.integers(0, 4, n).astype(float)  # ties on purpose
    got = typical._round_robin(assign, labeled, cand, score, k, min_size)
    want = _reference_round_robin(assign, labeled, cand, score, k, min_size)
    np.testing.assert_array_equal(got, want)
    assert got.shape == (k,) and np.unique(got).size == k
    assert cand[got].all() and not labeled[got].any()


def test_coverage_select_takes_the_most_uncertain_image_of_each_uncovered_cluster():
    # Three tight blobs; blob 0 already holds a labeled image, so with k = 2 the picks are
    # the most uncertain candidates of blobs 1 and 2.
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0]])
    blob = np.repeat(np.arange(3), 10)
    feats = centers[blob] + rng.normal(size=(30, 2))
    labeled = np.zeros(30, bool)
    labeled[0] = True
    score = rng.random(30)
    got = typical.coverage_select(jax.random.key(0), feats, labeled, ~labeled, score, 2)
    want = {int(np.flatnonzero(blob == b)[np.argmax(score[blob == b])]) for b in (1, 2)}
    assert set(got.tolist()) == want


def _setup(rng, n=300):
    feats = rng.normal(size=(n, 6)).astype(np.float32)
    order = methods.bal_order(jax.random.key(0), feats, num_clusters=5)
    logits = rng.normal(size=(n, 5))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return feats, order, probs


def test_first_cycle_is_typiclust_on_the_whole_pool():
    rng = np.random.default_rng(1)
    feats, order, _ = _setup(rng)
    labeled = np.zeros(300, bool)
    got = typical.bal_typical_select(
        jax.random.key(3),
        order=order,
        feats_ND=feats,
        labeled_mask=labeled,
        cycle=0,
        num_cycles=5,
        k=12,
        beta=1.0,
    )
    want = diversity.typiclust(jax.random.key(3), feats, labeled, ~labeled, 12)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("cycle", [1, 3, 4])
def test_later_cycles_stay_inside_the_bal_subpool(cycle):
    rng = np.random.default_rng(cycle)
    feats, order, probs = _setup(rng)
    labeled = np.zeros(300, bool)
    labeled[rng.choice(300, 12 * cycle, replace=False)] = True
    got = methods.select(
        "bal_typical",
        jax.random.key(0),
        cycle=cycle,
        num_cycles=5,
        k=12,
        labeled_mask=labeled,
        context=methods.SelectionContext(bal_order=order, pretext_features_ND=feats, beta=1.5),
        preds=methods.PoolPredictions(probs_NC=probs),
    )
    window = np.asarray(
        subpools.subpool(order, labeled, cycle=cycle, num_cycles=5, beta=1.5, min_size=12)
    )
    assert got.shape == (12,) and np.unique(got).size == 12
    assert np.isin(got, window).all() and not labeled[got].any()


def test_needs_probabilities_after_the_first_cycle():
    rng = np.random.default_rng(0)
    feats, order, _ = _setup(rng)
    with pytest.raises(ValueError, match="probabilities"):
        typical.bal_typical_select(
            jax.random.key(0),
            order=order,
            feats_ND=feats,
            labeled_mask=np.zeros(300, bool),
            cycle=1,
            num_cycles=5,
            k=5,
            beta=1.0,
        )


def test_switch_cycle_is_the_first_cycle_starting_at_the_fraction():
    counts = (200,) * 5
    assert methods.switch_cycle(counts, pool_size=10_000, switch_fraction=0.1) == 5  # never
    assert methods.switch_cycle(counts, pool_size=10_000, switch_fraction=0.04) == 2
    assert methods.switch_cycle(counts, pool_size=10_000, switch_fraction=0.05) == 3
    assert methods.switch_cycle(counts, pool_size=10_000, switch_fraction=0.0) == 0
    assert methods.switch_cycle(counts, pool_size=10_000, switch_fraction=1.0) == 5


def test_needs_beta_only_where_bals_sub_pools_are_drawn_from():
    counts, n = (200,) * 5, 10_000
    kw = dict(pool_size=n, switch_fraction=0.1)
    assert methods.needs_beta("bal", counts, **kw)
    assert methods.needs_beta("bal_typical", counts, **kw)
    assert not methods.needs_beta("bal", counts, **kw, uniform_subpools=True)
    assert not methods.needs_beta("random", counts, **kw)
    assert not methods.needs_beta("typiclust", counts, **kw)
    # bal_switch: only when the budget reaches its switch.
    for variant in ("bal_switch", "bal_herding", "bal_cover"):
        assert not methods.needs_beta(variant, counts, **kw)
        assert methods.needs_beta(variant, counts, pool_size=n, switch_fraction=0.05)


@pytest.mark.parametrize(
    ("variant", "fraction"),
    [(v, f) for v in methods.SWITCH_SELECTORS for f in (0.0, 0.05, 1.0)],
)
def test_switch_variants_are_their_selector_then_the_papers_bal(variant, fraction):
    rng = np.random.default_rng(7)
    feats, order, probs = _setup(rng)
    context = methods.SelectionContext(
        bal_order=order, pretext_features_ND=feats, beta=1.5, switch_fraction=fraction
    )
    switch = methods.switch_cycle((12,) * 5, pool_size=300, switch_fraction=fraction)
    labeled = np.zeros(300, bool)
    for cycle in range(5):
        key = jax.random.key(cycle)
        kw = dict(
            cycle=cycle,
            num_cycles=5,
            k=12,
            labeled_mask=labeled,
            context=context,
            preds=methods.PoolPredictions(probs_NC=probs),
        )
        got = methods.select(variant, key, **kw)
        if cycle >= switch and variant == "bal_cover":  # its own rule in BAL's windows
            expected = bal_cover_select(
                order=order,
                feats_ND=feats,
                labeled_mask=labeled,
                cycle=cycle,
                num_cycles=5,
                k=12,
                beta=1.5,
                sigma=None,
                probs=probs,
            )
        else:
            same_as = methods.SWITCH_SELECTORS[variant] if cycle < switch else "bal"
            expected = methods.select(same_as, key, **kw)
        np.testing.assert_array_equal(got, expected)
        labeled = labeled.copy()
        labeled[got] = True


def test_bal_switch_shares_typiclusts_picks_and_models_below_the_switch(tmp_path):
    # The toy pool, model and settings of the loop tests (same compiled steps).
    from active_loop_test import MEAN, SETTINGS, SPEC, STD, splits

    from bal_jax.active_loop import run_cycles
    from bal_jax.checkpoint import ModelStore

    pool, test, _ = splits()
    feats = np.asarray(pool.images.reshape(pool.images.shape[0], -1)[:, :16], np.float32)
    order = np.arange(pool.images.shape[0])
    store = ModelStore(tmp_path / "models")
    runs = {}
    for method in ("typiclust", "bal_switch"):
        runs[method] = run_cycles(
            jax.random.key(0),
            method=method,
            pool=pool,
            evaluation=test,
            counts=(10, 10),
            context=methods.SelectionContext(
                # No beta: the switch is never reached, so none is needed (nor searched).
                bal_order=order,
                pretext_features_ND=feats,
                beta=None,
                switch_fraction=0.5,
            ),
            model=SPEC,
            settings=SETTINGS,
            mean=MEAN,
            std=STD,
            model_store=store,
            log=lambda line: None,
        )
    assert [r["selected"] for r in runs["bal_switch"]] == [r["selected"] for r in runs["typiclust"]]
    assert [r["shared_model"] for r in runs["bal_switch"]] == [True, True]
