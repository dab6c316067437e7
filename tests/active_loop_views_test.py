"""Pieces chosen per dataset: augmentation modes (bal_jax.settings) and pretext feature views
(bal_jax.features)."""

import jax
import numpy as np
import pytest

from bal_jax import features, keys, settings, train
from bal_jax.active_loop import ModelSpec, TrainSettings


def test_rotate_each_turns_like_the_pretext_rotations():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 6, 6, 3), dtype=np.uint8)
    turns = np.array([0, 1, 2, 3, 3, 2, 1, 0])
    views, _ = train.rotations(images)  # view k*N + i is image i turned k times
    expected = np.stack([np.asarray(views)[k * 8 + i] for i, k in enumerate(turns)])
    np.testing.assert_array_equal(features.rotate_each(images, turns), expected)


@pytest.mark.parametrize("view", ["upright", "random_rotation"])
def test_pretext_features_come_from_the_chosen_view(monkeypatch, view):
    seen = {}

    def fake_features(net, images, **kw):
        seen["images"] = np.asarray(images)
        return np.zeros((len(images), 2), np.float32)

    monkeypatch.setattr(train, "fit_rotation", lambda *a, **k: None)
    monkeypatch.setattr(train, "predict_features", fake_features)
    monkeypatch.setattr(train, "rotation_losses", lambda net, images, **kw: np.zeros(len(images)))
    images = np.random.default_rng(1).integers(0, 256, (64, 32, 32, 1), dtype=np.uint8)
    key = jax.random.key(0)
    stage = TrainSettings(epochs=1, batch_size=8, learning_rate=0.1)
    kw = dict(model=ModelSpec(10, 1, 0.0625), settings=stage, mean=(0.5,), std=(0.25,))
    features.pretext_outputs(key, images, feature_view=view, **kw)
    if view == "upright":
        np.testing.assert_array_equal(seen["images"], images)
    else:  # one seeded quarter turn per image, as the released code's random rotation
        turns = np.asarray(jax.random.randint(keys.named_key(key, "feature_view"), (64,), 0, 4))
        assert len(set(turns.tolist())) == 4
        np.testing.assert_array_equal(seen["images"], features.rotate_each(images, turns))
    with pytest.raises(ValueError, match="feature_view"):
        features.pretext_outputs(key, images, feature_view="sideways", **kw)


def test_augmentation_modes_map_to_train_arguments():
    assert settings.augment_kwargs("crop_flip") == {"augment": True}
    assert settings.augment_kwargs("none") == {"augment": False}
    with pytest.raises(ValueError, match="augment must be one of"):
        settings.augment_kwargs("mirror")


def test_crop_only_passes_flip_false():
    assert settings.augment_kwargs("crop") == {"augment": True, "flip": False}


def test_crop_without_flip_never_mirrors():
    x = np.arange(2 * 8 * 8 * 1, dtype=np.uint8).reshape(2, 8, 8, 1)
    for seed in range(8):
        out = np.asarray(train.random_crop_flip(jax.random.key(seed), x, padding=0, flip=False))
        np.testing.assert_array_equal(out, x)
