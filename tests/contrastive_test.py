"""The SimCLR pretext: views, NT-Xent against NumPy, a tiny run that learns two classes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bal_jax import diagnostics, train
from bal_jax.models import VGG16
from bal_jax.train import views
from bal_jax.train.contrastive import ContrastiveNet, fit_contrastive, nt_xent

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _reference_nt_xent(z, tau):
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    sim = z @ z.T / tau
    n = z.shape[0]
    np.fill_diagonal(sim, -np.inf)
    partner = (np.arange(n) + n // 2) % n
    logp = sim - np.log(np.exp(sim).sum(1, keepdims=True))
    return -logp[np.arange(n), partner].mean(), int((sim.argmax(1) == partner).sum())


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_nt_xent_matches_numpy(tau):
    z = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)
    loss, correct = jax.jit(nt_xent, static_argnames=())(jnp.asarray(z), temperature=tau)
    want_loss, want_correct = _reference_nt_xent(z.astype(np.float64), tau)
    assert float(loss) == pytest.approx(want_loss, rel=1e-4)
    assert int(correct) == want_correct


def test_views_shape_range_and_identity_crop():
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    v = jax.jit(views.two_views)(jax.random.key(0), x)
    assert v.shape == (8, 32, 32, 3) and v.dtype == jnp.float32
    assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0
    # A crop of the whole image with no jitter is the image itself.
    whole = views.random_resized_crop(jax.random.key(1), x, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_allclose(np.asarray(whole), x.astype(np.float32), atol=1e-3)


def test_layer_features_shapes_and_final():
    net = VGG16(4, width=1 / 16, rngs=nnx.Rngs(0))
    x = jnp.zeros((2, 32, 32, 3))
    net.eval()
    np.testing.assert_array_equal(net.layer_features(x, layer="final"), net.features(x))
    dims = [net.layer_features(x, layer=f"block{b}").shape[1] for b in range(1, 6)]
    assert dims == [4, 8, 16, 32, 32]
    with pytest.raises(ValueError, match="unknown feature layer"):
        net.layer_features(x, layer="block9")


def _stripes(rng, n):
    """Two synthetic classes: reddish horizontal vs bluish vertical stripes (random period,
    phase and shades, pixel noise), so both colour and structure tell them apart."""
    i = np.arange(32)
    imgs, labels = [], []
    for j in range(n):
        cls = j % 2
        period = rng.integers(4, 9)
        wave = (np.sin(2 * np.pi * (i + rng.integers(0, 8)) / period) > 0).astype(np.float32)
        grid = np.tile(wave[:, None], (1, 32)) if cls == 0 else np.tile(wave[None, :], (32, 1))
        hue = np.array([0.9, 0.3, 0.2]) if cls == 0 else np.array([0.2, 0.3, 0.9])
        a = np.clip(hue * rng.uniform(0.7, 1.0), 0, 1)
        img = grid[..., None] * a + (1 - grid[..., None]) * a * rng.uniform(0.1, 0.4)
        img = np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1)
        imgs.append((255 * img).astype(np.uint8))
        labels.append(cls)
    return np.stack(imgs), np.asarray(labels)


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(0)
    x, y = _stripes(rng, 48)
    net = ContrastiveNet(width=1 / 16, rngs=nnx.Rngs(0))
    hist = fit_contrastive(
        jax.random.key(0), net, x, epochs=6, batch_size=16, learning_rate=3e-3, mean=MEAN, std=STD
    )
    return net, x, y, hist


def test_contrastive_pretext_lowers_its_loss(trained):
    _, _, _, hist = trained
    assert hist["steps_per_epoch"] == 3 and hist["epochs"] == 6
    assert np.all(np.isfinite(hist["loss"]))
    assert hist["loss"][-2:].mean() < hist["loss"][:2].mean() - 0.1


def test_contrastive_features_separate_two_synthetic_classes(trained):
    net, x, y, _ = trained
    feats = train.predict_features(net, x, layer="final", batch_size=32, mean=MEAN, std=STD)
    assert feats.shape == (48, net.feature_dim)
    assert diagnostics.knn_accuracy(feats, y, k=5) >= 0.8


def test_bad_input_fails_before_training():
    net = ContrastiveNet(width=1 / 16, rngs=nnx.Rngs(0))
    x = np.zeros((1, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="at least 2 images"):
        fit_contrastive(
            jax.random.key(0),
            net,
            x,
            epochs=1,
            batch_size=2,
            learning_rate=1e-3,
            mean=MEAN,
            std=STD,
        )
    with pytest.raises(ValueError, match="optimizer"):
        fit_contrastive(
            jax.random.key(0),
            net,
            np.zeros((4, 32, 32, 3), np.uint8),
            epochs=1,
            batch_size=2,
            learning_rate=1e-3,
            mean=MEAN,
            std=STD,
            optimizer="lamb",
        )
