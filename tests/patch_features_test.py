"""k-means patch features (`--pretext=patches`): reference computation, whitening, refusals."""

import jax
import numpy as np
import pytest

from bal_jax import patch_features as pf
from bal_jax.diagnostics import knn_accuracy

SMALL = dict(num_centers=8, num_patches=2000, kmeans_iters=10, pca_dim=16)


def _stripes(rng, n, vertical):
    """Noisy stripes of random phase and period: two texture classes of equal mean colour."""
    out = np.empty((n, 16, 16, 3), np.uint8)
    grid = np.arange(16)
    for i in range(n):
        period = rng.integers(3, 6)
        wave = (((grid + rng.integers(period)) // max(1, period // 2)) % 2) * 160 + 40
        img = np.broadcast_to(wave[None, :] if vertical else wave[:, None], (16, 16))
        noise = rng.normal(0, 25, (16, 16, 3))
        out[i] = np.clip(img[..., None] + noise, 0, 255).astype(np.uint8)
    return out


def _reference_raw(t: pf.PatchTransform, img):
    """One image's pooled triangle activations, loop by loop."""
    p = t.patch
    h, w = img.shape[0] - p + 1, img.shape[1] - p + 1
    k = t.centers_KP.shape[0]
    f = np.zeros((h, w, k))
    for r in range(h):
        for c in range(w):
            x = img[r : r + p, c : c + p].astype(np.float64).reshape(-1)
            x = (x - x.mean()) / np.sqrt(x.var() + t.contrast_eps)
            x = (x - t.patch_mean_P) @ t.zca_PP
            z = np.linalg.norm(x[None] - t.centers_KP, axis=1)
            f[r, c] = np.maximum(0, z.mean() - z)
    hh, hw = h // 2, w // 2
    quads = (f[:hh, :hw], f[:hh, hw:], f[hh:, :hw], f[hh:, hw:])
    return np.concatenate([q.sum((0, 1)) for q in quads])


@pytest.mark.parametrize("contrast_eps", [pf._CONTRAST_EPS, 10.0])
def test_features_match_a_loop_reference_and_are_whitened(contrast_eps):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 11, 12, 3), dtype=np.uint8)
    t = pf.fit_patch_features(jax.random.key(0), images, **SMALL, contrast_eps=contrast_eps)
    assert t.contrast_eps == contrast_eps
    raw = pf._raw_features(images[:2], t)
    for i in range(2):
        np.testing.assert_allclose(raw[i], _reference_raw(t, images[i]), rtol=2e-3, atol=2e-2)
    feats = pf.patch_features(t, images)
    assert feats.shape == (30, 16) and feats.dtype == np.float32
    # PCA whitening with the fitted images' statistics: zero mean, identity covariance.
    np.testing.assert_allclose(feats.mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(feats.T @ feats / 30, np.eye(16), atol=2e-2)


def test_same_key_same_features_and_grayscale():
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (20, 10, 10, 1), dtype=np.uint8)
    a = pf.patch_features(pf.fit_patch_features(jax.random.key(3), gray, **SMALL), gray)
    b = pf.patch_features(pf.fit_patch_features(jax.random.key(3), gray, **SMALL), gray)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (20, 16)


def test_texture_classes_are_nearest_neighbours():
    rng = np.random.default_rng(2)
    images = np.concatenate([_stripes(rng, 60, False), _stripes(rng, 60, True)])
    labels = np.repeat([0, 1], 60)
    t = pf.fit_patch_features(jax.random.key(0), images, **SMALL)
    feats = pf.patch_features(t, images)
    assert knn_accuracy(feats, labels, k=5) >= 0.95


@pytest.mark.parametrize(
    ("images", "kwargs", "message"),
    [
        (np.zeros((4, 16, 16, 3), np.float32), {}, "uint8"),
        (np.zeros((16, 16, 3), np.uint8), {}, r"\(N, H, W, C\)"),
        (np.zeros((4, 6, 6, 3), np.uint8), {}, "too small"),
        (np.zeros((4, 16, 16, 3), np.uint8), {"num_centers": 1}, "num_centers >= 2"),
        (np.zeros((4, 16, 16, 3), np.uint8), {"zca_eps": 0.0}, "zca_eps > 0"),
    ],
)
def test_bad_input_is_refused(images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pf.fit_patch_features(jax.random.key(0), images, **(SMALL | kwargs))


def test_channel_count_must_match_the_fit():
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (10, 12, 12, 3), dtype=np.uint8)
    t = pf.fit_patch_features(jax.random.key(0), rgb, **SMALL)
    with pytest.raises(ValueError, match="3-channel"):
        pf.patch_features(t, rgb[..., :1])


def test_saved_transform_round_trips_and_old_files_get_the_default_eps(tmp_path):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (12, 12, 12, 3), dtype=np.uint8)
    t = pf.fit_patch_features(jax.random.key(0), images, **SMALL, contrast_eps=10.0)
    np.savez(tmp_path / "t.npz", **pf.transform_arrays(t))
    back = pf.transform_from_arrays(np.load(tmp_path / "t.npz"))
    assert back.contrast_eps == 10.0
    np.testing.assert_array_equal(pf.patch_features(back, images), pf.patch_features(t, images))
    # A transform saved before contrast_eps was stored: the value it was computed with.
    old = {k: v for k, v in pf.transform_arrays(t).items() if k != "contrast_eps"}
    assert pf.transform_from_arrays(old).contrast_eps == pf._CONTRAST_EPS
