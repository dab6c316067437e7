"""experiments.plan: what a run will do, refused before any training when it cannot finish."""

import pytest

from experiments import config as config_lib
from experiments.plan import ConfigError, make_plan


def _cfg(preset="cifar10", **changes):
    return config_lib.override(config_lib.PRESETS[preset](), **changes)


@pytest.mark.parametrize(
    ("pool", "val", "classes"),
    [(68_257, 5_000, 10), (7_009, 800, 101)],  # SVHN and Caltech-101 (paper split) pools
)
def test_large_budget_plans_at_beta_one(pool, val, classes):
    # k*C/N is a hair above 1; beta = 1 must stay a candidate (issue 13 item 1).
    for changes in ({}, {"subpools": "uniform"}, {"beta": 1.0}):
        plan = make_plan(
            _cfg(budget="large", methods=("bal", "pt4al"), **changes),
            pool_size=pool,
            val_size=val,
            num_classes=classes,
        )
        assert plan.min_beta is None or plan.min_beta <= 1.0
    plan = make_plan(_cfg(budget="large"), pool_size=pool, val_size=val, num_classes=classes)
    assert 1.0 in plan.beta_grid and plan.search_cycles == 2


def test_fractions_of_pool_by_default_and_of_the_training_set_on_request():
    pool = make_plan(_cfg(), pool_size=45_000, val_size=5_000, num_classes=10)
    assert pool.counts == (900,) * 5 and pool.fraction_base == 45_000
    train = make_plan(_cfg(fractions_of="train"), pool_size=45_000, val_size=5_000, num_classes=10)
    assert train.counts == (1_000,) * 5 and train.fraction_base == 50_000
    with pytest.raises(ConfigError, match="pool holds 45000; use --fractions_of=pool"):
        make_plan(
            _cfg(fractions_of="train", budget="large"),
            pool_size=45_000,
            val_size=5_000,
            num_classes=10,
        )


def test_released_windows_default_to_the_last_cycles_budget():
    plan = make_plan(
        _cfg(budget="medium", window_variant="released", beta=2.0),
        pool_size=1_000,
        val_size=100,
        num_classes=10,
    )
    assert plan.counts == (100,) + (50,) * 6 and plan.window_budget == 50
    assert plan.min_beta == pytest.approx(99 / 50)
    explicit = make_plan(
        _cfg(budget="medium", window_variant="released", window_budget=100, beta=1.0),
        pool_size=1_000,
        val_size=100,
        num_classes=10,
    )
    assert explicit.window_budget == 100


@pytest.mark.parametrize(
    ("changes", "sizes", "match"),
    [
        ({"num_clusters": 2000}, (1_000, 100, 10), "--num_clusters=2000 exceeds the 1000 images"),
        ({}, (1_000, 100, 1), "the dataset has 1 class; BAL needs at least 2"),
        ({"beta_grid": (0.05, 0.09)}, (1_000, 100, 10), "no --beta_grid candidate reaches"),
        ({"beta": 0.01}, (1_000, 100, 10), "--beta=0.01 is below its minimum"),
        ({"fractions": (0.0001,)}, (1_000, 100, 10), "too small"),
    ],
)
def test_settings_that_would_fail_late_are_refused_in_the_plan(changes, sizes, match):
    pool, val, classes = sizes
    with pytest.raises(ConfigError, match=match):
        make_plan(_cfg(**changes), pool_size=pool, val_size=val, num_classes=classes)


def test_search_budget_is_explicit():
    small = make_plan(_cfg(), pool_size=45_000, val_size=5_000, num_classes=10)
    assert small.search_cycles == 5  # the small budget never reaches 15%: searched whole
    fixed = make_plan(_cfg(beta_search_cycles=2), pool_size=45_000, val_size=5_000, num_classes=10)
    assert fixed.search_cycles == 2
    medium = make_plan(_cfg(budget="medium"), pool_size=45_000, val_size=5_000, num_classes=10)
    assert medium.search_cycles == 2
