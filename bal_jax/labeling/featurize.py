"""A project's feature stage: features of the pool, and of images that join it later.

    feats, head_feats = pool_features(store, progress)        # at init
    feats, head_feats = more_features(store, images, ids)    # images added to the folder
    transform = FeatureTransform.load(folder)                # exported with a model

Four sources (`ProjectConfig.features`):
- 'patches': k-means patch features (`bal_jax.patch_features`, no network, under a minute for
  10,000 images); selection sees the 64-d whitened features, the linear head the standardised
  4K-d ones (`head_feats`), as the runner's `--pretext=patches` and `bal_jax.heads` do;
- 'rotation' (the paper's rotation network, SPEC Step 1) or 'simclr': a pretext network
  trained on the pool by the runner's own `bal_jax.features.train_pretext_network`, with the
  runner's keys (same pool, seed and settings: the same network);
- a file of the user's own embeddings (`bal_jax.embeddings`), read by image id.
`head_feats` is None where the head uses the selection features themselves; else (N, 2, D):
each image's and its mirror image's.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable

import numpy as np

from bal_jax import features, patch_features
from bal_jax.atomic import atomic_path
from bal_jax.embeddings import EmbeddingsError, read_embeddings
from bal_jax.keys import named_key
from bal_jax.labeling import models
from bal_jax.labeling.config import DEFAULT_PRETEXT, LabelingError, ProjectConfig
from bal_jax.settings import ModelSpec

__all__ = ["FeatureTransform", "more_features", "pool_features"]

_PATCHES = "patches.npz"
_PRETEXT = "pretext"


def _patch_pair(t, images):
    """Whitened features (selection) and the head's: the standardised features of each image
    and of its mirror image, stacked (N, 2, 4K) (flip augmentation and flip averaging:
    +3 points at 300 and 1,000 CIFAR-10 labels, `python -m experiments.classifiers`)."""
    return patch_features.patch_features(t, images), patch_features.head_views(t, images)


def _embeddings(config: ProjectConfig, root: str, ids, dim=None) -> np.ndarray:
    try:
        return read_embeddings(config.features_file, ids, root=root, dim=dim, allow_extra=True)
    except EmbeddingsError as e:
        raise LabelingError(str(e)) from None


def check_embeddings(config: ProjectConfig, root: str, ids) -> None:
    """Init's check of an embeddings file against the images, before any work: every image
    has one row, no id twice, no NaN; rows of other images are refused."""
    try:
        read_embeddings(config.features_file, ids, root=root)
    except EmbeddingsError as e:
        raise LabelingError(str(e)) from None


def pool_features(store, progress: Callable | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(selection features, head features or None) of the whole pool; stores what later
    images need (patch transform or pretext network) in the project folder."""
    c, pool, log = store.config, store.pool, store.log
    n = pool.ids_N.shape[0]
    key = named_key(store.key, "pretext")  # the runner's pretext key of this seed
    t0 = time.perf_counter()
    if c.features == "patches":
        path = store._path(_PATCHES)
        if os.path.exists(path):
            t = patch_features.transform_from_arrays(np.load(path))
        else:
            log(f"features: k-means patch features of {n} images (no network)")
            t = patch_features.fit_patch_features(named_key(key, "patches"), pool.images_NHWC)
            with atomic_path(path, suffix=".npz", sync=True) as tmp, open(tmp, "wb") as f:
                np.savez(f, **patch_features.transform_arrays(t))
        out = _patch_pair(t, pool.images_NHWC)
        log(f"patch features {time.perf_counter() - t0:.1f}s")
        return out
    if c.features_file is not None:
        log(f"features: {c.features_file} ({n} images)")
        return _embeddings(c, store.state["images"], pool.ids_N.tolist()), None
    if models.read_meta(store._path(_PRETEXT)) is None:
        log(f"pretext: {c.features} network on {n} images")
        channels = pool.images_NHWC.shape[-1]
        net = features.train_pretext_network(
            key,
            pool.images_NHWC,
            pretext=c.features,
            model=ModelSpec(4, channels, c.width),
            settings=c.pretext,
            mean=store.mean,
            std=store.std,
            progress=progress,
        )
        meta = {"pretext": c.features, "num_classes": 4, "channels": channels, "width": c.width}
        models.save_model(store._path(_PRETEXT), net, meta=meta)
        log(f"pretext training {time.perf_counter() - t0:.1f}s")
    return more_features(store, pool.images_NHWC, pool.ids_N.tolist())


def more_features(store, images_NHWC, ids) -> tuple[np.ndarray, np.ndarray | None]:
    """Features of some images of the pool from the stored transform (or the file)."""
    c = store.config
    if c.features == "patches":
        t = patch_features.transform_from_arrays(np.load(store._path(_PATCHES)))
        return _patch_pair(t, images_NHWC)
    if c.features_file is not None:
        dim = None if store._features is None else store._features.shape[1]
        return _embeddings(c, store.state["images"], ids, dim), None
    net = models.load_model(store._path(_PRETEXT))[0]
    return _network_features(net, images_NHWC, c.pretext, store.mean, store.std), None


def _network_features(net, images_NHWC, settings, mean, std) -> np.ndarray:
    """(N, D) float32 features of the upright images (SPEC Step 2), the runner's."""
    return np.asarray(
        features.network_features(net, images_NHWC, settings=settings, mean=mean, std=std),
        np.float32,
    )


class FeatureTransform:
    """What an exported linear model needs to turn new images into head features."""

    def __init__(self, source: str, folder: str):
        self.source, self.folder = source, folder

    @staticmethod
    def export(store, out_tmp: str) -> str:
        """Copies the project's transform into an export folder; returns the source name.

        Calling the transform gives (N, D) head features, or (N, 2, D) with the mirrors."""
        c = store.config
        if c.features == "patches":
            shutil.copy(store._path(_PATCHES), os.path.join(out_tmp, _PATCHES))
            return "patches"
        if c.features_file is not None:
            return "file"
        shutil.copytree(store._path(_PRETEXT), os.path.join(out_tmp, _PRETEXT))
        return c.features

    def __call__(self, images_NHWC, ids, *, meta: dict, features_file: str | None, root: str):
        if self.source == "patches":
            t = patch_features.transform_from_arrays(np.load(os.path.join(self.folder, _PATCHES)))
            return patch_features.head_views(t, images_NHWC)
        if self.source == "file":
            if features_file is None:
                raise LabelingError(
                    "this model classifies embeddings of your own: give --features=FILE with "
                    "a row for each image to label"
                )
            try:
                return read_embeddings(
                    features_file, ids, root=root, dim=meta["feature_dim"], allow_extra=True
                )
            except EmbeddingsError as e:
                raise LabelingError(str(e)) from None
        net, _ = models.load_model(os.path.join(self.folder, _PRETEXT))
        # Inference settings only (batch 512, float32).
        return _network_features(net, images_NHWC, DEFAULT_PRETEXT, meta["mean"], meta["std"])
