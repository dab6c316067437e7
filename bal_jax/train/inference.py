"""Pool inference in eval mode: logits and features, MC dropout, rotation losses, accuracy.

Usage::

  preds = predict(model, pool_u8, batch_size=512, mean=MEAN, std=STD)   # logits + features
  acc = evaluate(model, test_u8, test_y, batch_size=512, mean=MEAN, std=STD, tta_flip=True)

Inference runs in eval mode (BatchNorm running statistics) over fixed-size batches (the last
one padded), so one compilation serves every pool size. The pool may live on the host: each
batch is copied to the device as it is needed, so a pool larger than device memory works.
Results are NumPy arrays on the host. With ``tta_flip`` the logits are the mean of those of
the image and of its horizontal mirror (the features stay those of the upright image).
``dtype='bfloat16'`` runs the backbone in bfloat16 (``bal_jax.precision``); logits and features
are float32 either way.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from bal_jax import parallel
from bal_jax.models.vgg import FEATURE_LAYERS
from bal_jax.train.augment import NUM_ROTATIONS, normalize, rotations
from bal_jax.train.inputs import (
    check_images,
    check_key,
    check_model_input,
    make_hparams,
    num_devices,
    put,
    split_for,
)
from bal_jax.train.step import constrain


class Predictions(NamedTuple):
    """Pool inference results, NumPy arrays on the host in pool order."""

    logits_NC: np.ndarray
    features_ND: np.ndarray


@functools.partial(jax.jit, static_argnames=("graphdef", "out_sharding", "tta_flip"))
def _predict_batch(
    graphdef, params, rest, mean_C, std_C, images_BHWC_u8, *, out_sharding, tta_flip
):
    model = nnx.merge(graphdef, params, rest)
    x = normalize(images_BHWC_u8, mean=mean_C, std=std_C)
    feats = model.features(x)
    logits = model.classify(feats)
    if tta_flip:
        logits = 0.5 * (logits + model.classify(model.features(x[:, :, ::-1, :])))
    return constrain(logits, out_sharding), constrain(feats, out_sharding)


@functools.partial(jax.jit, static_argnames=("graphdef", "num_samples", "out_sharding"))
def _mc_dropout_batch(
    graphdef,
    params,
    rest,
    mean_C,
    std_C,
    images_BHWC_u8,
    index_B,
    key,
    *,
    num_samples,
    out_sharding,
):
    model = nnx.merge(graphdef, params, rest)
    # Dropout sits only before the head, so the (eval-mode) features are computed once and only
    # the dropout mask + head are sampled.
    feats = model.features(normalize(images_BHWC_u8, mean=mean_C, std=std_C))

    def sample(t):
        # One key per (sample, image index): results do not depend on the batch size.
        keys_B = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.fold_in(key, t), index_B)
        dropped = jax.vmap(lambda f, k: model.dropout(f, deterministic=False, rngs=k))(
            feats, keys_B
        )
        return jax.nn.softmax(model.head(dropped), axis=-1)

    probs_TBC = jax.lax.map(sample, jnp.arange(num_samples))
    return constrain(probs_TBC, out_sharding)


@functools.partial(jax.jit, static_argnames=("graphdef", "out_sharding"))
def _rotation_loss_batch(graphdef, params, rest, mean_C, std_C, images_BHWC_u8, *, out_sharding):
    model = nnx.merge(graphdef, params, rest)
    views, labels = rotations(images_BHWC_u8)
    logits = model(normalize(views, mean=mean_C, std=std_C))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return constrain(ce.reshape(NUM_ROTATIONS, -1).mean(axis=0), out_sharding)


def _inference(model, images, *, batch_size, mean, std, mesh, run_batch, square=False, dtype=None):
    """Calls ``run_batch(graphdef, params, rest, mean, std, x_u8, start, out_sharding)``."""
    images = check_images(images)
    check_model_input(model, images, square=square)
    ndev = num_devices(mesh)
    if not (isinstance(batch_size, int | np.integer) and batch_size >= 1) or batch_size % ndev:
        raise ValueError(
            f"batch_size must be a positive multiple of the device count ({ndev}), "
            f"got {batch_size!r}"
        )
    hp = make_hparams(
        learning_rate=0.0,
        momentum=0.0,
        weight_decay=0.0,
        mean=mean,
        std=std,
        channels=images.shape[-1],
    )
    graphdef, params, rest = split_for(model, training=False, dtype=dtype)
    params, rest, mean_C, std_C = put((params, rest, hp.mean_C, hp.std_C), mesh)
    out_sharding = None if mesh is None else parallel.replicated_sharding(mesh)
    images = np.asarray(images)  # host copy: batches go to the device one at a time
    n = images.shape[0]
    outs = []
    for start in range(0, n, batch_size):
        chunk = images[start : start + batch_size]
        if chunk.shape[0] < batch_size:
            chunk = np.concatenate(
                [chunk, np.zeros((batch_size - chunk.shape[0], *chunk.shape[1:]), np.uint8)]
            )
        if mesh is None:
            x = jax.device_put(chunk, jax.local_devices()[0])
        else:
            x = parallel.shard_batch(chunk, mesh)
        outs.append(run_batch(graphdef, params, rest, mean_C, std_C, x, start, out_sharding))
    outs = jax.device_get(outs)

    def join(*parts):  # batch axis: 1 for (T, B, C) MC samples, 0 otherwise
        axis = 1 if parts[0].ndim == 3 else 0
        return np.take(np.concatenate(parts, axis=axis), np.arange(n), axis=axis)

    return jax.tree.map(join, *outs)


def predict(
    model: nnx.Module,
    images_NHWC_u8,
    *,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    mesh: Mesh | None = None,
    tta_flip: bool = False,
    dtype=None,
) -> Predictions:
    """Logits and backbone features of a pool, in eval mode (SPEC Steps 2 and 5).

    Args:
      model: a ``VGG16``; its train/eval mode is not changed.
      images_NHWC_u8: (N, H, W, C) uint8 images (host or device; read batch by batch).
      batch_size: images per forward pass (fixed; the last batch is padded).
      mean: per-channel mean in [0, 1] units.
      std: per-channel standard deviation in [0, 1] units.
      mesh: optional ``('data',)`` mesh; each batch is sharded along it.
      tta_flip: average the logits of each image and its horizontal mirror.
      dtype: compute dtype of the backbone (``'float32'`` / ``'bfloat16'``); None: the model's.

    Returns:
      ``Predictions(logits_NC, features_ND)`` as float32 NumPy arrays in input order.
    """

    def run(graphdef, params, rest, mean_C, std_C, x, start, out_sharding):
        return _predict_batch(
            graphdef,
            params,
            rest,
            mean_C,
            std_C,
            x,
            out_sharding=out_sharding,
            tta_flip=bool(tta_flip),
        )

    logits, feats = _inference(
        model,
        images_NHWC_u8,
        batch_size=batch_size,
        mean=mean,
        std=std,
        mesh=mesh,
        run_batch=run,
        dtype=dtype,
    )
    return Predictions(np.asarray(logits, np.float32), np.asarray(feats, np.float32))


def predict_mc_dropout(
    key: jax.Array,
    model: nnx.Module,
    images_NHWC_u8,
    *,
    num_samples: int,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    mesh: Mesh | None = None,
    dtype=None,
) -> np.ndarray:
    """Monte-Carlo dropout class probabilities (the DBAL baseline): dropout on, BatchNorm in eval.

    Sample ``t`` of image ``i`` uses the dropout mask drawn from ``fold_in(fold_in(key, t), i)``, so
    results do not depend on ``batch_size``.

    Args:
      key: PRNG key.
      model: a ``VGG16`` built with ``dropout > 0``.
      images_NHWC_u8: (N, H, W, C) uint8 images.
      num_samples: T, the number of dropout samples.
      batch_size: images per forward pass.
      mean: per-channel mean in [0, 1] units.
      std: per-channel standard deviation in [0, 1] units.
      mesh: optional ``('data',)`` mesh.
      dtype: compute dtype of the backbone; None: the model's.

    Returns:
      (T, N, num_classes) float32 NumPy array of softmax probabilities.
    """
    key = check_key(key)
    rate = getattr(getattr(model, "dropout", None), "rate", 0.0)
    if not rate > 0:
        raise ValueError(
            "predict_mc_dropout needs a model built with dropout > 0 (VGG16(dropout=p))"
        )
    if not (isinstance(num_samples, int | np.integer) and num_samples >= 1):
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")

    def run(graphdef, params, rest, mean_C, std_C, x, start, out_sharding):
        index_B = jnp.arange(x.shape[0], dtype=jnp.int32) + start
        return _mc_dropout_batch(
            graphdef,
            params,
            rest,
            mean_C,
            std_C,
            x,
            index_B,
            key,
            num_samples=int(num_samples),
            out_sharding=out_sharding,
        )

    return _inference(
        model,
        images_NHWC_u8,
        batch_size=batch_size,
        mean=mean,
        std=std,
        mesh=mesh,
        run_batch=run,
        dtype=dtype,
    )


def rotation_losses(
    model: nnx.Module,
    images_NHWC_u8,
    *,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    mesh: Mesh | None = None,
    dtype=None,
) -> np.ndarray:
    """Per-image rotation pretext loss (the PT4AL baseline's ranking score).

    Mean cross-entropy over the four ``rot90`` views of each image, eval mode, no augmentation.

    Args:
      model: the rotation network (4-way head).
      images_NHWC_u8: (N, H, W, C) uint8 square images.
      batch_size: images per forward pass (each forwards 4 views).
      mean: per-channel mean in [0, 1] units.
      std: per-channel standard deviation in [0, 1] units.
      mesh: optional ``('data',)`` mesh.
      dtype: compute dtype of the backbone; None: the model's.

    Returns:
      (N,) float32 NumPy array of losses (sort them as numbers, not strings).
    """
    if getattr(model, "num_classes", NUM_ROTATIONS) != NUM_ROTATIONS:
        raise ValueError(f"rotation_losses needs a 4-way head, got {model.num_classes} classes")

    def run(graphdef, params, rest, mean_C, std_C, x, start, out_sharding):
        return _rotation_loss_batch(
            graphdef, params, rest, mean_C, std_C, x, out_sharding=out_sharding
        )

    return _inference(
        model,
        images_NHWC_u8,
        batch_size=batch_size,
        mean=mean,
        std=std,
        mesh=mesh,
        run_batch=run,
        square=True,
        dtype=dtype,
    )


def evaluate(
    model: nnx.Module,
    images_NHWC_u8,
    labels_N,
    *,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    mesh: Mesh | None = None,
    tta_flip: bool = False,
    dtype=None,
) -> float:
    """Top-1 accuracy in eval mode.

    Args:
      model: a classifier.
      images_NHWC_u8: (N, H, W, C) uint8 images.
      labels_N: (N,) integer labels.
      batch_size: images per forward pass.
      mean: per-channel mean in [0, 1] units.
      std: per-channel standard deviation in [0, 1] units.
      mesh: optional ``('data',)`` mesh.
      tta_flip: average the logits of each image and its horizontal mirror.
      dtype: compute dtype of the backbone; None: the model's.

    Returns:
      Accuracy in [0, 1].
    """
    labels = np.asarray(labels_N)
    n = np.shape(images_NHWC_u8)[0] if np.ndim(images_NHWC_u8) else -1
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match images, got {labels.shape}")
    logits = predict(
        model,
        images_NHWC_u8,
        batch_size=batch_size,
        mean=mean,
        std=std,
        mesh=mesh,
        tta_flip=tta_flip,
        dtype=dtype,
    ).logits_NC
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


@functools.partial(jax.jit, static_argnames=("graphdef", "layer", "out_sharding"))
def _features_batch(graphdef, params, rest, mean_C, std_C, images_BHWC_u8, *, layer, out_sharding):
    model = nnx.merge(graphdef, params, rest)
    feats = model.layer_features(normalize(images_BHWC_u8, mean=mean_C, std=std_C), layer=layer)
    return constrain(feats, out_sharding)


def predict_features(
    model: nnx.Module,
    images_NHWC_u8,
    *,
    layer: str = "final",
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    mesh: Mesh | None = None,
    dtype=None,
) -> np.ndarray:
    """Features of one layer of a pool, in eval mode (SPEC Step 2, with a choice of layer).

    Args:
      model: a ``VGG16`` or ``ContrastiveNet`` (anything with ``layer_features``).
      images_NHWC_u8: (N, H, W, C) uint8 images.
      layer: 'final' (the paper's features) or 'block1'..'block5' (global-average-pooled
        output of that conv stage), see ``bal_jax.models.vgg.FEATURE_LAYERS``.
      batch_size: images per forward pass.
      mean: per-channel mean in [0, 1] units.
      std: per-channel standard deviation in [0, 1] units.
      mesh: optional ``('data',)`` mesh.
      dtype: compute dtype of the backbone (``'float32'`` / ``'bfloat16'``); None: the model's.

    Returns:
      (N, D_layer) float32 NumPy array in input order.
    """
    if layer not in FEATURE_LAYERS:
        raise ValueError(f"unknown feature layer {layer!r}; choose one of {FEATURE_LAYERS}")

    def run(graphdef, params, rest, mean_C, std_C, x, start, out_sharding):
        return _features_batch(
            graphdef, params, rest, mean_C, std_C, x, layer=layer, out_sharding=out_sharding
        )

    feats = _inference(
        model,
        images_NHWC_u8,
        batch_size=batch_size,
        mean=mean,
        std=std,
        mesh=mesh,
        run_batch=run,
        dtype=dtype,
    )
    return np.asarray(feats, np.float32)
