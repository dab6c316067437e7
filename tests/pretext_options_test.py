"""Runner options of issue 11: pretext task, feature layer, their cache key and refusals."""

import dataclasses

import jax
import numpy as np
import pytest

from bal_jax import patch_features
from bal_jax.features import pretext_outputs
from bal_jax.settings import ModelSpec, TrainSettings
from experiments import config as config_lib
from experiments.pipeline import ConfigError, check_config, pretext_cache_dir


def test_pretext_outputs_simclr_block_features_and_probe():
    rng = np.random.default_rng(0)
    # Same network and batch as contrastive_test's, so one process compiles the step once.
    pool = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    val = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    outs = pretext_outputs(
        jax.random.key(0),
        pool,
        model=ModelSpec(10, 3, 1 / 16),
        settings=TrainSettings(epochs=1, batch_size=16, learning_rate=1e-3, eval_batch_size=8),
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        pretext="simclr",
        feature_layer="block3",
        probe_images=val,
    )
    assert outs.features_ND.shape == (16, 16) and outs.probe_features_MD.shape == (5, 16)
    assert np.isnan(outs.losses_N).all()  # no rotation losses: PT4AL is refused with simclr
    with pytest.raises(ValueError, match="unknown pretext"):
        pretext_outputs(
            jax.random.key(0),
            pool,
            model=ModelSpec(10, 3, 1 / 16),
            settings=TrainSettings(epochs=1, batch_size=4, learning_rate=1e-3),
            mean=(0.5,) * 3,
            std=(0.25,) * 3,
            pretext="jigsaw",
        )


def test_pretext_outputs_patches_pool_and_probe_features():
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    outs = pretext_outputs(
        jax.random.key(0),
        pool,
        model=ModelSpec(10, 3, 1 / 16),
        settings=TrainSettings(epochs=1, batch_size=16, learning_rate=1e-3),
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        pretext="patches",
        probe_images=pool[:5],
    )
    dim = min(patch_features.PCA_DIM, 40 - 1)  # the PCA keeps at most N - 1 directions
    assert outs.features_ND.shape == (40, dim) and outs.probe_features_MD.shape == (5, dim)
    np.testing.assert_allclose(outs.probe_features_MD, outs.features_ND[:5], rtol=1e-4, atol=1e-4)
    assert np.isnan(outs.losses_N).all() and set(outs.seconds) == {"pretext", "features"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pretext": "simclr", "methods": ("bal", "pt4al")}, "pt4al ranks images by rotation"),
        ({"pretext": "simclr", "indicator": "pretext_loss"}, "needs rotation losses"),
        ({"pretext": "moco"}, "--pretext must be one of"),
        ({"feature_layer": "block7"}, "--feature_layer must be one of"),
        ({"pretext": "patches", "methods": ("pt4al",)}, "pt4al ranks images by rotation"),
        ({"pretext": "patches", "feature_layer": "block3"}, "no network layers"),
        ({"pretext": "patches", "pretext_feature": "random_rotation"}, "has no rotations"),
        ({"classifier": "linear"}, "--classifier=linear fits on the patch features"),
        (
            {"classifier": "linear", "pretext": "patches", "methods": ("random", "dbal")},
            "no dropout to sample",
        ),
        ({"classifier": "svm"}, "--classifier must be one of vgg, linear"),
    ],
)
def test_bad_pretext_options_are_refused_before_training(changes, message):
    with pytest.raises(ConfigError, match=message):
        check_config(config_lib.override(config_lib.cifar10_cpu(), **changes))


def test_cache_key_unchanged_by_defaults_and_split_by_options(tmp_path):
    base = config_lib.cifar10_cpu()
    key = lambda c: pretext_cache_dir(c, str(tmp_path))  # noqa: E731
    # Default options leave the key of caches written before the options existed.
    assert key(base) == key(dataclasses.replace(base, simclr_lr=0.5))
    keys = {
        key(base),
        key(dataclasses.replace(base, pretext="simclr")),
        key(dataclasses.replace(base, pretext="simclr", simclr_lr=3e-3)),
        key(dataclasses.replace(base, feature_layer="block4")),
        key(dataclasses.replace(base, pretext="patches")),
    }
    assert len(keys) == 5
    check_config(dataclasses.replace(base, pretext="simclr", methods=("bal_typical", "random")))
