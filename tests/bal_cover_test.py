"""BAL-cover (bal_jax.bal_cover): uncertainty-weighted coverage inside BAL's sub-pools."""

import jax
import numpy as np
import pytest

from bal_jax import coverage, methods, subpools
from bal_jax.bal_cover import bal_cover_select


def _pool(n=240, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, 4)).astype(np.float32)
    order = methods.bal_order(jax.random.key(0), feats, num_clusters=4)
    logits = 2.0 * rng.normal(size=(n, 4))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return feats, order, probs


def _kw(feats, order, probs, labeled, cycle=2, k=10):
    return dict(
        order=order,
        feats_ND=feats,
        labeled_mask=labeled,
        cycle=cycle,
        num_cycles=5,
        k=k,
        beta=1.0,
        sigma=0.5,
        probs=probs,
    )


def test_picks_are_the_weighted_herding_of_the_window():
    feats, order, probs = _pool()
    labeled = np.zeros(240, bool)
    labeled[order[:20]] = True
    got = bal_cover_select(**_kw(feats, order, probs, labeled))
    window = np.asarray(
        subpools.subpool(
            order, labeled, cycle=2, num_cycles=5, beta=1.0, min_size=10, variant="paper"
        )
    )
    assert np.unique(got).size == 10 and not labeled[got].any()
    assert set(got.tolist()) <= set(window.tolist())
    cand = np.zeros(240, bool)
    cand[window] = True
    expected = coverage.maxherding(
        feats, labeled, 10, sigma=0.5, candidates=cand, weights=1.0 - probs.max(1)
    )
    np.testing.assert_array_equal(got, expected)


def test_certain_images_do_not_draw_picks():
    # Two far-apart blobs; the model is sure of blob A (max p = 1), so covering it is worth
    # nothing and every pick covers blob B, although both lie in the window.
    rng = np.random.default_rng(1)
    a = rng.normal(size=(60, 2)) * 0.1 + np.array([5.0, 0.0])
    b = rng.normal(size=(60, 2)) * 0.1 + np.array([0.0, 5.0])
    feats = np.concatenate([a, b]).astype(np.float32)
    probs = np.full((120, 2), 0.5)
    probs[:60] = [1.0, 0.0]
    order = np.arange(120)
    labeled = np.zeros(120, bool)
    kw = _kw(feats, order, probs, labeled, cycle=0, k=6)
    kw.update(num_cycles=1, beta=1.0)  # one cycle: the window is the whole pool
    got = bal_cover_select(**kw)
    assert (got >= 60).all()


def test_through_select_after_the_switch_and_maxherding_before():
    feats, order, probs = _pool()
    ctx = methods.SelectionContext(
        bal_order=order, pretext_features_ND=feats, beta=1.0, switch_fraction=0.05
    )
    preds = methods.PoolPredictions(probs_NC=probs)
    labeled = np.zeros(240, bool)
    kw = dict(num_cycles=5, k=10, context=ctx, preds=preds)
    first = methods.select("bal_cover", jax.random.key(0), cycle=0, labeled_mask=labeled, **kw)
    np.testing.assert_array_equal(
        first, methods.select("maxherding", jax.random.key(0), cycle=0, labeled_mask=labeled, **kw)
    )
    labeled[order[:20]] = True  # 20 of 240 labeled: past the 5 % switch
    got = methods.select("bal_cover", jax.random.key(0), cycle=2, labeled_mask=labeled, **kw)
    expected = bal_cover_select(**dict(_kw(feats, order, probs, labeled), sigma=None))
    np.testing.assert_array_equal(got, expected)


def test_registered_as_a_bal_variant():
    assert "bal_cover" in methods.METHODS
    for group in (methods.HOT_START, methods.NEEDS_PROBS, methods.NEEDS_BETA):
        assert "bal_cover" in group
    assert methods.SWITCH_SELECTORS["bal_cover"] == "maxherding"


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(probs=None), "needs the main model's probabilities"),
        (dict(feats_ND=None), "needs the pretext features"),
        (dict(probs=np.ones((5, 4)) / 4), r"probs must have shape \(240, num_classes\)"),
    ],
)
def test_bad_arguments(change, match):
    feats, order, probs = _pool()
    kw = dict(_kw(feats, order, probs, np.zeros(240, bool)), **change)
    with pytest.raises(ValueError, match=match):
        bal_cover_select(**kw)
