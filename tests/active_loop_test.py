"""run_cycles at toy size: the collapse check and the shared-model store (train once)."""

import functools

import jax
import numpy as np
from sklearn.datasets import load_digits

from bal_jax.active_loop import (
    ModelSpec,
    Split,
    TrainSettings,
    run_cycles,
    search_beta,
)
from bal_jax.checkpoint import ModelStore
from bal_jax.keys import lineage_root
from bal_jax.methods import SelectionContext
from bal_jax.train import Recipe
from experiments import report

MEAN, STD = (0.2,), (0.3,)
SETTINGS = TrainSettings(epochs=1, batch_size=32, learning_rate=0.05, eval_batch_size=64)
SPEC = ModelSpec(10, 1, 1 / 16)


@functools.cache
def digits():
    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    x = np.repeat(np.repeat(x, 4, axis=1), 4, axis=2)[..., None]
    return x, d.target.astype(np.int32)


def splits():
    x, y = digits()
    return Split(x[:300], y[:300]), Split(x[300:400], y[300:400]), Split(x[400:500], y[400:500])


def cycles(method, pool, test, val, store=None, context=None, counts=(30, 30), **kw):
    return run_cycles(
        jax.random.key(0),
        method=method,
        pool=pool,
        evaluation=test,
        validation=val,
        counts=counts,
        context=context or SelectionContext(),
        model=SPEC,
        mean=MEAN,
        std=STD,
        model_store=store,
        **{"log": lambda s: None, "settings": SETTINGS, **kw},
    )


def test_a_collapsed_model_is_reported_as_a_failure():
    pool, test, val = splits()
    # Every pool label is class 0: the model can only learn to answer 0 for every image.
    one_class = Split(pool.images, np.zeros_like(pool.labels))
    lines = []
    records = cycles("random", one_class, test, val, log=lines.append)
    assert all(r["collapsed"] and r["majority_share"] == 1.0 for r in records)
    assert any("COLLAPSED" in line for line in lines)
    for r in records:
        r["seed"] = 0
    table = report.accuracy_table(records)
    assert "collapsed (seed 0)" in table
    assert f"{100 * records[0]['accuracy']:.1f}" not in table.split("\n")[2]
    # A healthy run on the real labels is not flagged. (Enough steps, with the paper's schedule:
    # the training step compiled for the collapsed run serves this one too.)
    healthy = SETTINGS._replace(recipe=Recipe(min_steps=120))
    records = cycles("random", pool, test, val, settings=healthy)
    assert not any(r["collapsed"] for r in records), [r["majority_share"] for r in records]


def test_warm_start_and_scratch_share_the_first_cycle_only(tmp_path):
    pool, test, val = splits()
    store = ModelStore(tmp_path / "models")
    warm = cycles("random", pool, test, val, store, warm_start=True)
    scratch = cycles("random", pool, test, val, store, warm_start=False)
    # The same initial weights, labels and training: one model, restored for the second run.
    assert scratch[0]["shared_model"] and scratch[0]["model_digest"] == warm[0]["model_digest"]
    assert scratch[0]["accuracy"] == warm[0]["accuracy"]
    # Random's picks do not depend on the model; the second cycle's training does.
    assert scratch[1]["selected"] == warm[1]["selected"]
    assert not scratch[1]["shared_model"]
    assert scratch[1]["model_digest"] != warm[1]["model_digest"]


def test_methods_sharing_a_labeled_set_share_its_model(tmp_path):
    pool, test, val = splits()
    store = ModelStore(tmp_path / "models")
    rand = cycles("random", pool, test, val, store)
    conf = cycles("confidence", pool, test, val, store)
    # Same initial random set: trained once, the same accuracy, different picks later.
    assert rand[0]["selected"] == conf[0]["selected"]
    assert not rand[0]["shared_model"] and conf[0]["shared_model"]
    assert rand[0]["accuracy"] == conf[0]["accuracy"]
    assert rand[0]["model_digest"] == conf[0]["model_digest"]
    assert rand[1]["selected"] != conf[1]["selected"] and not conf[1]["shared_model"]
    # Without a store the same training gives the same numbers (the store only saves time).
    alone = cycles("confidence", pool, test, val)
    assert [r["accuracy"] for r in alone] == [r["accuracy"] for r in conf]


def test_beta_candidates_share_the_first_cycle_with_the_bal_run(tmp_path):
    pool, test, val = splits()
    store = ModelStore(tmp_path / "models")
    order = np.random.default_rng(0).permutation(pool.images.shape[0])
    context = SelectionContext(bal_order=order)
    result = search_beta(
        jax.random.key(0),
        candidates=(1.0, 2.0),
        search_cycles=2,
        pool=pool,
        validation=val,
        counts=(30, 30),
        context=context,
        model=SPEC,
        settings=SETTINGS,
        mean=MEAN,
        std=STD,
        model_store=store,
        log=lambda s: None,
    )
    runs = cycles("bal", pool, test, val, store, context=context._replace(beta=result.beta))
    # Both cycles of the chosen beta were trained during the search.
    assert all(r["shared_model"] for r in runs)


def test_models_trained_on_other_device_counts_are_other_models():
    key, spec = jax.random.key(0), (tuple(SPEC), 0.0, True)
    root = lineage_root(key, spec, SETTINGS, MEAN, STD, 1)
    assert root == lineage_root(key, spec, SETTINGS, MEAN, STD, 1)
    assert root != lineage_root(key, spec, SETTINGS, MEAN, STD, 2)
    assert root != lineage_root(key, spec, SETTINGS._replace(learning_rate=0.1), MEAN, STD, 1)
    assert root != lineage_root(jax.random.key(1), spec, SETTINGS, MEAN, STD, 1)
