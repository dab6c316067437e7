"""experiments.feature_settings: each setting fitted without labels and scored on validation."""

import types

import numpy as np
import pytest
from patch_features_test import _stripes

from bal_jax.settings import Split
from experiments import feature_settings

TOY = dict(num_centers=8, patch=5, contrast_eps=10.0, zca_eps=0.1, num_patches=2000)


def _data():
    rng = np.random.default_rng(0)
    images = np.concatenate([_stripes(rng, 40, False), _stripes(rng, 40, True)])
    labels = np.repeat([0, 1], 40).astype(np.int32)
    order = rng.permutation(80)
    pool, val = order[:60], order[60:]
    return types.SimpleNamespace(
        pool=Split(images[pool], labels[pool]), val=Split(images[val], labels[val])
    )


def test_score_fits_without_labels_and_scores_the_validation_images():
    rows, seconds = feature_settings.score(TOY, _data(), sizes=[20, 40], seeds=[0, 1])
    assert [(r["size"], r["seed"]) for r in rows] == [(20, 0), (20, 1), (40, 0), (40, 1)]
    # Two texture classes: the head separates them from 20 labels (20-NN votes over the whole
    # labeled set at these sizes, so only its range is checked).
    assert all(r["head"] > 0.8 and 0 <= r["knn"] <= 1 for r in rows)
    assert seconds > 0


def test_grid_changes_one_default_at_a_time():
    assert feature_settings.GRID[0] == {}
    for change in feature_settings.GRID[1:]:
        ((k, v),) = change.items()
        assert k in feature_settings.DEFAULT and v != feature_settings.DEFAULT[k]
    assert feature_settings.name({"patch": 5}) == "patch=5"


def test_paired_gain_is_per_seed_over_the_sizes():
    base = [dict(head=h) for h in (0.5, 0.5, 0.6, 0.6)]  # sizes x seeds = 2 x 2
    rows = [dict(head=h) for h in (0.52, 0.54, 0.62, 0.64)]
    mean, std = feature_settings.paired_gain(rows, base, 2, 2)
    assert mean == pytest.approx(3.0) and std == pytest.approx(np.std([2.0, 4.0], ddof=1))
