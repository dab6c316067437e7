"""The classifier step (`bal_jax.learners`): run_cycles with the linear head, its resume, the
beta search scoring on validation features, and what the head refuses."""

import active_loop_test
import jax
import numpy as np
import pytest
from active_loop_test import MEAN, SETTINGS, SPEC, digits

from bal_jax.active_loop import Split, search_beta
from bal_jax.checkpoint import RunCheckpointer
from bal_jax.learners import HeadFeatures, LinearLearner, linear_predictions
from bal_jax.methods import SelectionContext, bal_order


def data():
    """Digits as pixels (the head's features: (N, 2, 64), the second view a dimmer copy)."""
    x, y = digits()
    flat = x[:, ::4, ::4, 0].reshape(len(x), -1).astype(np.float32)
    views = np.stack([flat, 0.8 * flat + 10.0], axis=1)
    pool, test, val = slice(0, 300), slice(300, 400), slice(400, 500)
    splits = [Split(x[s], y[s]) for s in (pool, test, val)]
    return splits, HeadFeatures(views[pool], views[test], views[val])


def cycles(method, feats, *, counts=(20, 20, 20), **kw):
    (pool, test, val), _ = data()
    return active_loop_test.cycles(
        method, pool, test, val, counts=counts, head_features=feats, **kw
    )


def test_linear_cycles_classify_and_record_their_choice():
    _, feats = data()
    records = cycles("confidence", feats)
    assert [r["num_labeled"] for r in records] == [20, 40, 60]
    # 60 labels of 10 digit classes: a linear model on pixels is far above chance.
    assert records[-1]["accuracy"] > 0.7 and not records[-1]["collapsed"]
    for r in records:
        assert r["shared_model"] is False and r["l2"] > 0 and 0 <= r["cv_accuracy"] <= 1
    # Another labeled set, another model digest (the resume test checks they repeat).
    assert len({r["model_digest"] for r in records}) == 3


def test_a_resumed_linear_run_equals_an_uninterrupted_one(tmp_path):
    _, feats = data()
    whole = cycles("margin", feats)
    ckpt = RunCheckpointer(tmp_path / "run")
    cycles("margin", feats, checkpointer=ckpt, stop_after=2)
    ckpt.close()
    ckpt = RunCheckpointer(tmp_path / "run")
    resumed = cycles("margin", feats, checkpointer=ckpt)
    ckpt.close()

    def same(r):
        return {k: v for k, v in r.items() if k != "seconds"}

    assert [same(r) for r in resumed] == [same(r) for r in whole]


def test_uncertainty_picks_follow_the_heads_probabilities():
    _, feats = data()
    learner = LinearLearner(
        jax.random.key(0), feats, pool_labels=data()[0][0].labels, num_classes=10
    )
    labeled = np.sort(cycles("confidence", feats, counts=(30,))[0]["selected"])
    learner.fit(0, labeled)
    preds = learner.predictions("confidence", jax.random.key(1))
    assert preds.probs_NC.shape == (300, 10)
    np.testing.assert_allclose(preds.probs_NC.sum(1), 1.0, rtol=1e-5)
    # The least confident unlabeled image is what confidence sampling picks first.
    record = cycles("confidence", feats, counts=(30, 1))[1]
    conf = preds.probs_NC.max(1)
    conf[labeled] = np.inf
    assert record["selected"] == [int(np.argmin(conf))]
    # Flip averaging: the probabilities are the mean of the two views'.
    direct = linear_predictions(learner._head, feats.pool[:, 0]).probs_NC
    assert not np.allclose(direct, preds.probs_NC)


def test_beta_search_scores_candidates_on_validation_features():
    (pool, _, val), feats = data()
    flat = feats.pool[:, 0]
    order = bal_order(jax.random.key(0), flat, num_clusters=10)
    context = SelectionContext(bal_order=order, pretext_features_ND=flat)
    result = search_beta(
        jax.random.key(0),
        candidates=(1.0, 2.0),
        search_cycles=2,
        pool=pool,
        validation=val,
        counts=(20, 20, 20),
        context=context,
        model=SPEC,
        settings=SETTINGS,
        mean=MEAN,
        std=(0.3,),
        log=lambda s: None,
        head_features=feats,
    )
    again = cycles("bal", feats, context=context._replace(beta=result.beta), stop_after=2)
    assert result.scores[result.beta] == again[-1]["val_accuracy"]


def test_the_head_has_no_dropout_to_sample():
    _, feats = data()
    learner = LinearLearner(
        jax.random.key(0), feats, pool_labels=data()[0][0].labels, num_classes=10
    )
    learner.fit(0, np.arange(30))
    with pytest.raises(ValueError, match="MC dropout"):
        learner.predictions("dbal", jax.random.key(0))
