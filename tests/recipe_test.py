"""Tests for the small-data recipe's pieces (bal_jax.train.recipe / optim / step / inference):
warm-up + cosine schedule, the step floor, label smoothing, the weight EMA, flip TTA, and the
recipe's validation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from sklearn.datasets import load_digits

from bal_jax import train
from bal_jax.models import VGG16
from bal_jax.train import Recipe

WIDTH = 1 / 16
MEAN, STD = (0.2,), (0.3,)


@functools.cache
def digits():
    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    x = np.repeat(np.repeat(x, 4, axis=1), 4, axis=2)[..., None]
    return x, d.target.astype(np.int32)


def small_model(seed=0):
    return VGG16(10, in_channels=1, width=WIDTH, rngs=nnx.Rngs(seed))


def params_of(model):
    return jax.tree.map(np.asarray, nnx.as_pure(nnx.state(model, nnx.Param)))


def fit(model, recipe, *, n=64, epochs=2, lr=0.05):
    x, y = digits()
    return train.fit(
        jax.random.key(0),
        model,
        x[:n],
        y[:n],
        epochs=epochs,
        batch_size=32,
        learning_rate=lr,
        mean=MEAN,
        std=STD,
        augment=False,
        recipe=recipe,
    )


@pytest.mark.parametrize("total,warmup", [(100, 0), (100, 10), (7, 3)])
def test_warmup_cosine_matches_optax(total, warmup):
    ours = jax.jit(train.warmup_cosine_schedule(0.3, total, warmup))
    ref = optax.warmup_cosine_decay_schedule(0.0, 0.3, warmup + 1, total + 1, end_value=0.0)
    for t in range(total + 3):
        # Step t of ours is optax's step t + 1 (our warm-up's first step already moves).
        expected = ref(t + 1) if warmup else 0.3 * 0.5 * (1 + np.cos(np.pi * min(t, total) / total))
        np.testing.assert_allclose(ours(t), expected, rtol=1e-5, atol=1e-7)


def test_step_floor_adds_whole_epochs_and_cosine_ends_near_zero():
    out = fit(small_model(), Recipe(schedule="cosine", min_steps=9), epochs=1)
    # 64 images at batch 32: 2 steps an epoch, so 9 steps need 5 epochs.
    assert out["epochs"] == 5 and out["loss"].shape == (5,)
    assert out["learning_rate"][0] == pytest.approx(0.05)  # no warm-up: cosine from the peak
    assert out["learning_rate"][-1] < 0.1 * 0.05
    # Large sets are not slowed: the floor is already met.
    assert fit(small_model(), Recipe(min_steps=2), epochs=3)["epochs"] == 3


@pytest.mark.parametrize("alpha", [0.0, 0.2])
def test_label_smoothing_loss_matches_optax(alpha):
    x, y = digits()
    # One full batch at learning rate 0: the reported loss is the batch's (smoothed) CE under
    # the initial weights (BatchNorm on batch statistics, as in training).
    out = train.fit(
        jax.random.key(0),
        small_model(),
        x[:8],
        y[:8],
        epochs=1,
        batch_size=8,
        learning_rate=0.0,
        mean=(0.0,),
        std=(1.0,),
        augment=False,
        recipe=Recipe(label_smoothing=alpha),
    )
    logits = small_model()(jnp.asarray(x[:8], jnp.float32) / 255.0)
    targets = optax.smooth_labels(jax.nn.one_hot(y[:8], 10), alpha)
    ref = optax.softmax_cross_entropy(logits, targets).mean()
    np.testing.assert_allclose(out["loss"][0], ref, rtol=1e-4)


def distance(a, b):
    return sum(
        float(np.abs(u - v).sum())
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_ema_averages_the_weights():
    plain, tiny, slow = small_model(), small_model(), small_model()
    fit(plain, Recipe(), epochs=3, lr=0.1)
    # A vanishing decay tracks the live weights; a slow one stays near the initial weights.
    fit(tiny, Recipe(ema_decay=1e-9), epochs=3, lr=0.1)
    fit(slow, Recipe(ema_decay=0.999), epochs=3, lr=0.1)
    init = params_of(small_model())
    assert distance(params_of(plain), params_of(tiny)) < 1e-3
    assert 0 < distance(params_of(slow), init) < distance(params_of(plain), init)


def test_debiased_ema_is_the_exponentially_weighted_mean():
    from bal_jax.train.step import ema_decay_at

    w = np.random.default_rng(0).normal(size=30)
    for d in (0.5, 0.9, 0.995):
        avg = 0.0
        for t, w_t in enumerate(w):
            decay = float(ema_decay_at(t, d, True))
            avg = decay * avg + (1 - decay) * w_t
            weights = d ** np.arange(t, -1, -1.0)
            np.testing.assert_allclose(avg, np.dot(weights, w[: t + 1]) / weights.sum(), rtol=1e-4)
    # TensorFlow's warm-up (the default) caps the decay at (1 + t) / (10 + t): any decay above
    # 0.986 averages the same way for the first 640 steps.
    for d in (0.99, 0.995, 0.999):
        assert float(ema_decay_at(640, d, False)) == pytest.approx(641 / 650)


def test_recipe_repr_leaves_out_later_fields_at_their_defaults():
    # Model digests hash the repr: adding ema_debias must not orphan stored models.
    assert "ema_debias" not in repr(train.RECIPES["small_data"])
    assert repr(Recipe()) == (
        "Recipe(schedule='multistep', min_steps=0, warmup_fraction=0.0, label_smoothing=0.0, "
        "ema_decay=0.0, tta_flip=False, nesterov=False)"
    )
    assert repr(Recipe(ema_debias=True)).endswith("nesterov=False, ema_debias=True)")


def test_tta_flip_averages_the_logits_of_the_mirror():
    x, _ = digits()
    model = small_model()
    ev = dict(batch_size=16, mean=MEAN, std=STD)
    plain = train.predict(model, x[:20], **ev)
    mirror = train.predict(model, np.ascontiguousarray(x[:20, :, ::-1]), **ev)
    tta = train.predict(model, x[:20], tta_flip=True, **ev)
    np.testing.assert_allclose(tta.logits_NC, 0.5 * (plain.logits_NC + mirror.logits_NC), atol=1e-5)
    np.testing.assert_allclose(tta.features_ND, plain.features_ND, atol=1e-6)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(schedule="linear"), "schedule"),
        (dict(min_steps=-1), "min_steps"),
        (dict(warmup_fraction=1.0), "warmup_fraction"),
        (dict(label_smoothing=-0.1), "label_smoothing"),
        (dict(ema_decay=1.0), "ema_decay"),
        (dict(ema_debias=1), "ema_debias"),
    ],
)
def test_bad_recipe_is_refused(change, match):
    with pytest.raises(ValueError, match=match):
        fit(small_model(), Recipe()._replace(**change), epochs=1)


def test_presets_name_their_recipe():
    from experiments import config

    assert config.cifar10().train.recipe == train.RECIPES["paper"]
    assert config.cifar10_cpu().train.recipe == train.RECIPES["small_data"]
    for preset in config.PRESETS.values():
        assert train.recipe_name(preset().train.recipe) in train.RECIPES
        assert preset().pretext_train.recipe == train.RECIPES["paper"]
