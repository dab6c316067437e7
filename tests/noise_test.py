"""experiments.noise: fixed labeled sets, one training per (recipe, seed), the table."""

import numpy as np

from bal_jax import train
from experiments import config, noise
from experiments.config import load_data


def test_labeled_set_is_fixed_per_size_and_distinct():
    a = noise.labeled_set(1000, 200, data_seed=0)
    assert np.array_equal(a, noise.labeled_set(1000, 200, data_seed=0))
    assert np.unique(a).size == 200 and a.min() >= 0 and a.max() < 1000
    assert not np.array_equal(a, noise.labeled_set(1000, 200, data_seed=1))


def test_train_once_and_table_on_digits(monkeypatch):
    # The step floor of small_data, scaled down (640 steps would take most of a minute here).
    small = train.RECIPES["small_data"]._replace(min_steps=64)
    monkeypatch.setitem(train.RECIPES, "small_data", small)
    cfg = config.override(config.digits_cpu(), width=1 / 16, epochs=1, batch_size=32)
    data = load_data(cfg)
    idx = noise.labeled_set(data.pool.images.shape[0], 64, data_seed=0)
    rows = []
    for recipe in ("paper", "small_data"):
        c = config.override(cfg, recipe=recipe)
        rows.append({"recipe": recipe, "size": 64, "seed": 0, **noise.train_once(c, data, idx, 0)})
    assert rows[0]["steps"] == 2 and rows[1]["steps"] >= 64  # the step floor
    assert all(0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["val_accuracy"] <= 1.0 for r in rows)
    table = noise.noise_table(rows, ["paper", "small_data"], [64])
    assert "| 64 | paper | 1 |" in table and "| 64 | small_data | 1 |" in table
