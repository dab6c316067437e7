"""The feature stage (SPEC Steps 1-2): pool features for clustering and selection.

    outs = pretext_outputs(key, pool.images, model=ModelSpec(10, 3, 0.125), settings=pretext,
                           mean=ds.mean, std=ds.std, pretext="patches")
    outs.features_ND, outs.losses_N      # what K-means/CDD, TypiClust, ... and PT4AL read

Three sources behind one `PretextOutputs`: the paper's rotation network (SPEC Step 1), SimCLR
(`bal_jax.train.fit_contrastive`) and k-means patch features without a network
(`bal_jax.patch_features`). A file of the user's own embeddings enters through
`bal_jax.embeddings.read_embeddings` with the same (N, D) shape.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import numpy as np
from flax import nnx

from bal_jax import patch_features, train
from bal_jax.keys import named_key
from bal_jax.models import VGG16
from bal_jax.settings import ModelSpec, TrainSettings, fit_kwargs

__all__ = [
    "FEATURE_VIEWS",
    "NETWORK_PRETEXTS",
    "PRETEXTS",
    "PRETEXT_CODE_VERSION",
    "SIMCLR_LR",
    "PretextOutputs",
    "network_features",
    "pretext_network",
    "pretext_outputs",
    "rotate_each",
    "train_pretext_network",
]

# Version of what `pretext_outputs` computes: part of the runner's pretext cache key, so
# features made by older code are never reused. Bump it with any change to the rotation
# training, the network or the feature extraction that changes the features.
PRETEXT_CODE_VERSION = 3
# Feature views (SPEC Step 2): the upright image (paper) or one random rotation (released code).
FEATURE_VIEWS = ("upright", "random_rotation")


class PretextOutputs(NamedTuple):
    features_ND: np.ndarray
    losses_N: np.ndarray  # rotation losses (PT4AL); NaN for pretexts without them
    seconds: dict[str, float]  # {"pretext": training, "features": features + losses}
    probe_features_MD: np.ndarray | None = None  # features of `probe_images`, if given
    # 'patches': the fitted `patch_features.PatchTransform` (the linear head's features
    # come from the same transform; no second fit).
    transform: patch_features.PatchTransform | None = None


# Pretext tasks of `pretext_outputs`: the paper's rotation prediction (SPEC Step 1), SimCLR
# instance discrimination and k-means patch features without a network (issue 11).
PRETEXTS = ("rotation", "simclr", "patches")
# Pretexts that train a network (`train_pretext_network`).
NETWORK_PRETEXTS = ("rotation", "simclr")
# Adam learning rate of SimCLR (the runner's --simclr_lr default and the labeling tool's).
SIMCLR_LR = 1e-3


def pretext_network(pretext: str, *, in_channels: int, width: float, rngs: nnx.Rngs) -> nnx.Module:
    """An untrained pretext network: the 4-way rotation VGG16 or SimCLR's `ContrastiveNet`."""
    if pretext == "rotation":
        return VGG16(4, in_channels=in_channels, width=width, rngs=rngs)
    if pretext == "simclr":
        return train.ContrastiveNet(in_channels=in_channels, width=width, rngs=rngs)
    raise ValueError(f"no pretext network for {pretext!r}; choose one of {NETWORK_PRETEXTS}")


def train_pretext_network(
    key: jax.Array,
    images: np.ndarray,
    *,
    pretext: str,
    model: ModelSpec,
    settings: TrainSettings,
    mean: Sequence[float],
    std: Sequence[float],
    mesh=None,
    progress: Callable | None = None,
) -> nnx.Module:
    """SPEC Step 1: the pretext network trained on `images` (no labels), as the runner's
    `pretext_outputs` and the labeling tool train it (same keys, same network).

    'rotation' trains with SGD on `settings` (`bal_jax.train.fit_rotation`); 'simclr' with
    Adam at ``settings.learning_rate``, warm-up + cosine, for ``settings.epochs`` epochs of
    ``settings.batch_size`` images x 2 views (`bal_jax.train.fit_contrastive`).
    """
    net = pretext_network(
        pretext,
        in_channels=model.in_channels,
        width=model.width,
        rngs=nnx.Rngs(named_key(key, "init")),
    )
    if pretext == "rotation":
        train.fit_rotation(
            named_key(key, "train"),
            net,
            images,
            **fit_kwargs(settings, mean, std, mesh),
            progress=progress,
        )
    else:
        train.fit_contrastive(
            named_key(key, "train"),
            net,
            images,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            mean=mean,
            std=std,
            mesh=mesh,
            progress=progress,
        )
    return net


def rotate_each(images_NHWC: np.ndarray, quarter_turns_N: np.ndarray) -> np.ndarray:
    """Image i turned by ``quarter_turns_N[i]`` x 90 degrees, as `train.rotations` turns it.

    Args:
      images_NHWC: square images.
      quarter_turns_N: (N,) ints in [0, 4).

    Returns:
      The rotated images, same shape and dtype.
    """
    out = np.empty_like(images_NHWC)
    for k in range(4):
        sel = quarter_turns_N == k
        out[sel] = np.rot90(images_NHWC[sel], k, axes=(1, 2))
    return out


def network_features(
    net: nnx.Module,
    images: np.ndarray,
    *,
    settings: TrainSettings,
    mean: Sequence[float],
    std: Sequence[float],
    mesh=None,
    layer: str = "final",
) -> np.ndarray:
    """(N, D) features of a pretext network on `images` (SPEC Step 2), in eval mode."""
    ev = dict(
        batch_size=settings.eval_batch_size, mean=mean, std=std, mesh=mesh, dtype=settings.dtype
    )
    return np.asarray(train.predict_features(net, images, layer=layer, **ev))


def pretext_outputs(
    key: jax.Array,
    images: np.ndarray,
    *,
    model: ModelSpec,
    settings: TrainSettings,
    mean: Sequence[float],
    std: Sequence[float],
    mesh=None,
    progress: Callable | None = None,
    feature_view: str = "upright",
    pretext: str = "rotation",
    feature_layer: str = "final",
    probe_images: np.ndarray | None = None,
) -> PretextOutputs:
    """SPEC Steps 1-2 inputs: trains the pretext network, returns pool features and losses.

    Args:
      key: PRNG key of the pretext network's initialisation and training.
      images: (N, H, W, C) uint8 pool (no labels are used).
      model: the backbone's shape (``num_classes`` is ignored: the pretext has its own head).
      settings: the pretext's optimisation settings (for 'simclr': epochs, batch size and
        the Adam learning rate; milestones are not used, the schedule is warm-up + cosine).
      mean, std: per-channel normalisation.
      mesh: optional device mesh.
      progress: ``callable(epoch, metrics)`` per epoch.
      pretext: 'rotation' (the paper's, SPEC Step 1), 'simclr' (``fit_contrastive``) or
        'patches' (``bal_jax.patch_features``: no network; `model`, `settings` and
        `feature_layer` other than 'final' do not apply).
      feature_layer: 'final' (the paper's penultimate features, of the upright image) or a
        global-average-pooled block ('block1'..'block5', ``VGG16.layer_features``).
      probe_images: optional (M, H, W, C) uint8 images (the validation split) whose features
        are returned too, for the feature-quality diagnostic.
      feature_view: one of `FEATURE_VIEWS`: 'upright' (the paper's) or 'random_rotation' (the
        released code: each pool image turned by a random multiple of 90 degrees, drawn from
        `key`).

    Returns:
      ``PretextOutputs``: pool features, per-image rotation losses (what PT4AL sorts by; NaN
      for 'simclr' and 'patches', which have none), timings, probe features.
    """
    if feature_view not in FEATURE_VIEWS:
        raise ValueError(f"feature_view must be one of {FEATURE_VIEWS}, got {feature_view!r}")
    if pretext not in PRETEXTS:
        raise ValueError(f"unknown pretext {pretext!r}; choose one of {PRETEXTS}")
    if pretext == "patches":
        return _patch_outputs(key, images, probe_images)
    t0 = time.perf_counter()
    net = train_pretext_network(
        key,
        images,
        pretext=pretext,
        model=model,
        settings=settings,
        mean=mean,
        std=std,
        mesh=mesh,
        progress=progress,
    )
    t1 = time.perf_counter()
    ev = dict(
        batch_size=settings.eval_batch_size, mean=mean, std=std, mesh=mesh, dtype=settings.dtype
    )
    views = images
    if feature_view == "random_rotation":
        turns = jax.random.randint(named_key(key, "feature_view"), (images.shape[0],), 0, 4)
        views = rotate_each(np.asarray(images), np.asarray(turns))
    feats = dict(settings=settings, mean=mean, std=std, mesh=mesh, layer=feature_layer)
    features = network_features(net, views, **feats)
    probe = None
    if probe_images is not None:
        probe = network_features(net, probe_images, **feats)
    if pretext == "rotation":
        losses = np.asarray(train.rotation_losses(net, images, **ev))
    else:
        losses = np.full((images.shape[0],), np.nan, np.float32)
    seconds = {"pretext": t1 - t0, "features": time.perf_counter() - t1}
    return PretextOutputs(features, losses, seconds, probe)


def _patch_outputs(key, images, probe_images) -> PretextOutputs:
    t0 = time.perf_counter()
    transform = patch_features.fit_patch_features(named_key(key, "patches"), np.asarray(images))
    t1 = time.perf_counter()
    features = patch_features.patch_features(transform, np.asarray(images))
    probe = None
    if probe_images is not None:
        probe = patch_features.patch_features(transform, np.asarray(probe_images))
    losses = np.full((features.shape[0],), np.nan, np.float32)
    return PretextOutputs(
        features,
        losses,
        {"pretext": t1 - t0, "features": time.perf_counter() - t1},
        probe,
        transform,
    )
