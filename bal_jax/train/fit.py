"""Training loops: ``fit`` (main task, SPEC Step 6) and ``fit_rotation`` (pretext, Step 1).

Usage::

  fit(key, model, x_u8, y, epochs=100, batch_size=128, learning_rate=0.1,
      milestones=(30, 60, 90), mean=MEAN, std=STD)                      # paper Table I
  fit(key, model, x_u8, y, epochs=20, batch_size=64, learning_rate=0.05,
      recipe=RECIPES["small_data"], mean=MEAN, std=STD)                  # small labeled sets
  fit_rotation(key, rot_net, pool_u8, epochs=120, batch_size=256, learning_rate=0.1,
               milestones=(30, 60, 90), mean=MEAN, std=STD)

- Images stay on the device as uint8 for the whole run; each step is one jitted call that gathers
  its batch by index, augments and normalises it on the device. No host-to-device copy per step
  and no host sync per step: the losses are fetched once per epoch, checked for NaN/inf, and the
  first bad step is reported. (A whole-epoch ``lax.scan`` was measured and rejected: XLA:CPU runs
  the convolution filter gradient about 20x slower inside a while loop.)
- The last partial batch is padded and masked: the loss, the accuracy and the BatchNorm batch
  statistics use only the real rows. When the data set is smaller than ``batch_size`` the batch
  shrinks to the data set (rounded up to the device count) instead of computing on padding.
- Randomness: epoch ``e`` uses ``fold_in(key, e)``, split into a shuffle key and a step key, and
  step ``s`` uses ``fold_in(step_key, s)``. Same key, data and device -> bit-identical parameters.
- The optimizer state is fresh in every call. The model is updated in place after every epoch;
  after a NaN it keeps the last finite epoch. With a recipe's EMA it ends with the averaged
  weights and BatchNorm statistics.
- ``dtype='bfloat16'``: mixed precision (bf16 compute, float32 parameters, optimizer state,
  BatchNorm statistics and loss; ``bal_jax.precision``); the model itself stays as it is.
- ``steps_per_dispatch=G``: G steps per jitted call (a ``lax.scan``), for accelerators where the
  per-step launch dominates at small widths; leave it at 1 on a CPU (see ``step.train_steps``).
  The same key gives the same run up to float rounding.
- Data parallelism: pass ``mesh=bal_jax.parallel.make_mesh()``; images and parameters are
  replicated and each batch is sharded along ``'data'`` (BatchNorm statistics and gradients are
  global, so the result matches one device up to float rounding).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from bal_jax import parallel
from bal_jax.precision import compute_dtype
from bal_jax.train.augment import NUM_ROTATIONS
from bal_jax.train.inputs import (
    check_images,
    check_key,
    check_model_input,
    make_hparams,
    num_devices,
    put,
    split_for,
    strong_copy,
)
from bal_jax.train.optim import MAX_MILESTONES, make_optimizer, make_schedule
from bal_jax.train.recipe import PAPER, Recipe, check_recipe
from bal_jax.train.step import (
    TrainState,
    epoch_order,
    float_leaves,
    take_batch,
    take_batches,
    train_step,
    train_steps,
)


def _fit(
    key,
    model,
    images,
    labels,
    *,
    rotation: bool,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    milestones: Sequence[int],
    lr_decay: float,
    momentum: float,
    weight_decay: float,
    mean,
    std,
    augment: bool,
    mesh: Mesh | None,
    progress: Callable[[int, dict], Any] | None,
    stage: str,
    recipe: Recipe = PAPER,
    flip: bool = True,
    dtype=None,
    steps_per_dispatch: int = 1,
) -> dict:
    key = check_key(key)
    recipe = check_recipe(recipe)
    if dtype is not None:
        compute_dtype(dtype)
    if not (isinstance(steps_per_dispatch, int | np.integer) and steps_per_dispatch >= 1):
        raise ValueError(f"steps_per_dispatch must be an integer >= 1, got {steps_per_dispatch!r}")
    images = check_images(images)
    check_model_input(model, images, square=rotation)
    n = images.shape[0]
    if labels is not None:
        labels_np = np.asarray(labels)
        if labels_np.shape != (n,):
            raise ValueError(
                f"labels must have shape ({n},) to match images, got {labels_np.shape}"
            )
        if not np.issubdtype(labels_np.dtype, np.integer):
            raise ValueError(f"labels must be integers, got dtype {labels_np.dtype}")
        num_classes = getattr(model, "num_classes", None)
        if labels_np.min() < 0 or (num_classes is not None and labels_np.max() >= num_classes):
            raise ValueError(
                f"labels must be in [0, {num_classes}), "
                f"got range [{labels_np.min()}, {labels_np.max()}]"
            )
    if rotation and getattr(model, "num_classes", NUM_ROTATIONS) != NUM_ROTATIONS:
        raise ValueError(f"the rotation net needs a 4-way head, got {model.num_classes} classes")
    if not (isinstance(epochs, int | np.integer) and epochs >= 0):
        raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
    ndev = num_devices(mesh)
    if not (isinstance(batch_size, int | np.integer) and batch_size >= 1) or batch_size % ndev:
        raise ValueError(
            f"batch_size must be a positive multiple of the device count ({ndev}), "
            f"got {batch_size!r}"
        )
    milestones = tuple(int(m) for m in milestones)
    if any(m <= 0 for m in milestones) or list(milestones) != sorted(set(milestones)):
        raise ValueError(f"milestones must be increasing positive epochs, got {milestones}")
    if len(milestones) > MAX_MILESTONES:
        raise ValueError(
            f"at most {MAX_MILESTONES} milestones are supported, got {len(milestones)}"
        )
    hp = make_hparams(
        learning_rate=learning_rate,
        lr_decay=lr_decay,
        momentum=momentum,
        weight_decay=weight_decay,
        mean=mean,
        std=std,
        channels=images.shape[-1],
        label_smoothing=recipe.label_smoothing,
        ema_decay=recipe.ema_decay,
        ema_debias=recipe.ema_debias,
    )

    # Small data sets: a smaller batch computes the same masked step without the padding.
    batch = min(int(batch_size), -(-n // ndev) * ndev)
    num_steps = -(-n // batch)
    boundaries = tuple(m * num_steps for m in milestones)
    if epochs and recipe.min_steps:
        # A floor on optimizer steps, in whole epochs: tiny labeled sets get enough updates.
        epochs = max(epochs, -(-recipe.min_steps // num_steps))
    total_steps = epochs * num_steps
    warmup_steps = int(recipe.warmup_fraction * total_steps)

    graphdef, params, rest = split_for(model, training=True, dtype=dtype)
    tx = make_optimizer(learning_rate=learning_rate, boundaries=boundaries, lr_decay=lr_decay)
    never = np.iinfo(np.int32).max
    hp = hp._replace(
        boundaries=jnp.asarray(
            boundaries + (never,) * (MAX_MILESTONES - len(boundaries)), jnp.int32
        ),
        total_steps=jnp.asarray(total_steps, jnp.int32),
        warmup_steps=jnp.asarray(warmup_steps, jnp.int32),
    )
    schedule = recipe.schedule
    lr_at = make_schedule(
        learning_rate=learning_rate,
        boundaries=boundaries,
        lr_decay=lr_decay,
        schedule=schedule,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
    )
    # train_step donates its state: start from copies so the model's own arrays stay valid (and
    # strongly typed: a weak-typed leaf, e.g. set from a Python scalar, would recompile the step).
    params, rest = jax.tree.map(strong_copy, (params, rest))
    use_ema = recipe.ema_decay > 0
    ema = jax.tree.map(strong_copy, (params, float_leaves(rest))) if use_ema else None
    state = TrainState(params, rest, tx.init(params), jnp.asarray(0, jnp.int32), ema)
    state, hp = put((state, hp), mesh)
    images_dev = put(images, mesh)
    labels_dev = None if labels is None else put(np.asarray(labels_np, np.int32), mesh)
    batch_sharding = None if mesh is None else parallel.batch_sharding(mesh)

    static = dict(
        augment=bool(augment),
        rotation=rotation,
        batch_sharding=batch_sharding,
        schedule=recipe.schedule,
        nesterov=bool(recipe.nesterov),
    )
    group = min(int(steps_per_dispatch), num_steps)
    num_grouped = num_steps - num_steps % group if group > 1 else 0

    history = {"loss": [], "accuracy": [], "learning_rate": []}
    for epoch in range(epochs):
        idx_SB, mask_SB, step_key = put(
            epoch_order(key, epoch, num_images=n, batch_size=batch, num_steps=num_steps), mesh
        )
        step_metrics = []
        for first in range(0, num_grouped, group):
            batches = take_batches(
                images_dev,
                labels_dev,
                idx_SB,
                mask_SB,
                step_key,
                jnp.asarray(first, jnp.int32),
                count=group,
                batch_sharding=batch_sharding,
            )
            state, m = train_steps(graphdef, state, hp, *batches, **static)
            step_metrics.append(m)
        # The remainder of the epoch (or all of it, with one step per dispatch).
        for step in range(num_grouped, num_steps):
            batch_u8, batch_labels, batch_mask, step_key_s = take_batch(
                images_dev,
                labels_dev,
                idx_SB,
                mask_SB,
                step_key,
                jnp.asarray(step, jnp.int32),
                batch_sharding=batch_sharding,
            )
            state, m = train_step(
                graphdef, state, hp, batch_u8, batch_labels, batch_mask, step_key_s, **static
            )
            step_metrics.append(m)
        # The one host sync per epoch.
        m = jax.tree.map(
            lambda *v: np.concatenate([np.reshape(x, -1) for x in v]),
            *jax.device_get(step_metrics),
        )
        bad = np.flatnonzero(~np.isfinite(m["loss"]))
        if bad.size:
            step = int(bad[0])
            raise FloatingPointError(
                f"{stage}: non-finite loss {m['loss'][step]} at epoch {epoch} (0-based), "
                f"step {step} of {num_steps} (global step {epoch * num_steps + step}); try a "
                "lower learning rate or check the inputs"
            )
        count = max(int(m["count"].sum()), 1)
        epoch_metrics = {
            "loss": float(np.sum(m["loss"] * m["count"]) / count),
            "accuracy": float(m["correct"].sum() / count),
            "learning_rate": float(lr_at(epoch * num_steps)),
        }
        for k, v in epoch_metrics.items():
            history[k].append(v)
        # The model follows training epoch by epoch (copies: the next step donates `state`); after a
        # NaN it keeps the last finite epoch.
        nnx.update(model, *jax.tree.map(jnp.array, (state.params, state.rest)))
        if progress is not None:
            progress(epoch, epoch_metrics)
    if use_ema and epochs:
        params, rest_floats = state.ema
        rest = jax.tree.map(
            lambda avg, cur: cur if avg is None else avg,
            rest_floats,
            state.rest,
            is_leaf=lambda x: x is None,
        )
        nnx.update(model, *jax.tree.map(jnp.array, (params, rest)))
    out = {k: np.asarray(v, np.float64) for k, v in history.items()}
    out["steps_per_epoch"] = num_steps
    out["batch_size"] = batch
    out["epochs"] = epochs
    return out


def fit(
    key: jax.Array,
    model: nnx.Module,
    images_NHWC_u8,
    labels_N,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    milestones: Sequence[int] = (),
    lr_decay: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    mean: Sequence[float],
    std: Sequence[float],
    augment: bool = True,
    flip: bool = True,
    mesh: Mesh | None = None,
    progress: Callable[[int, dict], Any] | None = None,
    recipe: Recipe = PAPER,
    dtype=None,
    steps_per_dispatch: int = 1,
) -> dict:
    """Trains a classifier in place with SGD (SPEC Step 6), under a recipe.

    Args:
      key: PRNG key; the whole run is a function of it (shuffling, augmentation, dropout).
      model: a ``VGG16`` (or any NNX module taking ``(x, mask_N=, rngs=)``); updated in place.
      images_NHWC_u8: (N, H, W, C) uint8 images, NumPy or JAX; moved to the device once.
      labels_N: (N,) integer labels in ``[0, model.num_classes)``.
      epochs: passes over the data.
      batch_size: images per step (a multiple of the device count); N < batch_size is fine.
      learning_rate: initial learning rate.
      milestones: epochs at which the learning rate is multiplied by ``lr_decay``.
      lr_decay: multistep decay factor.
      momentum: SGD momentum.
      weight_decay: L2 weight decay (added to the gradient, PyTorch style).
      mean: per-channel mean in [0, 1] units.
      std: per-channel standard deviation in [0, 1] units.
      augment: random crop (pad 4) + horizontal flip.
      flip: with ``augment``, also flip (False: crop only, e.g. digits).
      mesh: optional ``('data',)`` mesh for data parallelism.
      progress: optional ``callable(epoch, metrics)`` called after each epoch.
      recipe: schedule shape, step floor, warm-up, label smoothing, EMA (see ``Recipe``); the
        default is the paper's multistep recipe. ``recipe.tta_flip`` applies to inference
        (pass it to ``predict`` / ``evaluate``).
      dtype: compute dtype, ``'float32'`` or ``'bfloat16'`` (``bal_jax.precision``); None uses
        the model's own. Parameters, optimizer state and the loss are float32 either way.
      steps_per_dispatch: optimizer steps per jitted call (``lax.scan``); 1 on a CPU.

    Returns:
      ``{'loss': (E,), 'accuracy': (E,), 'learning_rate': (E,), 'steps_per_epoch': int,
      'batch_size': int, 'epochs': E}``, E the epochs run (``recipe.min_steps`` may add some);
      loss and accuracy are means over the epoch's (augmented) samples, learning_rate is the
      rate at the epoch's first step.

    Raises:
      FloatingPointError: the loss became NaN or inf (the message names the epoch and step).
    """
    return _fit(
        key,
        model,
        images_NHWC_u8,
        labels_N,
        rotation=False,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        milestones=milestones,
        lr_decay=lr_decay,
        momentum=momentum,
        weight_decay=weight_decay,
        mean=mean,
        std=std,
        augment=augment,
        flip=flip,
        mesh=mesh,
        progress=progress,
        stage="train",
        recipe=recipe,
        dtype=dtype,
        steps_per_dispatch=steps_per_dispatch,
    )


def fit_rotation(
    key: jax.Array,
    model: nnx.Module,
    images_NHWC_u8,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    milestones: Sequence[int] = (),
    lr_decay: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    mean: Sequence[float],
    std: Sequence[float],
    augment: bool = True,
    flip: bool = True,
    mesh: Mesh | None = None,
    progress: Callable[[int, dict], Any] | None = None,
    dtype=None,
    steps_per_dispatch: int = 1,
) -> dict:
    """Trains the rotation pretext network in place (SPEC Step 1).

    Each image of a batch is augmented once (random crop + flip) and all four of its ``rot90`` views
    enter the same forward pass with labels 0..3; the loss is the mean cross-entropy over the views.
    ``batch_size`` counts images, so a step forwards ``4 * batch_size`` views (the paper's batch 256
    means 256 images, 1024 views; the authors' code forwards the four rotations as four passes of
    256, so BatchNorm statistics there are per rotation, here over all views).

    Args:
      key: PRNG key.
      model: network with a 4-way head (``rotation_net``); updated in place.
      images_NHWC_u8: (N, H, W, C) uint8 square images; no labels are used.
      epochs, batch_size, learning_rate, milestones, lr_decay, momentum, weight_decay, mean, std,
      augment, flip, mesh, progress, dtype, steps_per_dispatch: as in ``fit``.

    Returns:
      The metrics dict of ``fit`` (loss and rotation accuracy over views).
    """
    return _fit(
        key,
        model,
        images_NHWC_u8,
        None,
        rotation=True,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        milestones=milestones,
        lr_decay=lr_decay,
        momentum=momentum,
        weight_decay=weight_decay,
        mean=mean,
        std=std,
        augment=augment,
        flip=flip,
        mesh=mesh,
        progress=progress,
        stage="pretext",
        dtype=dtype,
        steps_per_dispatch=steps_per_dispatch,
    )


def steps_per_epoch(num_images: int, batch_size: int, *, num_devices: int = 1) -> int:
    """Optimizer steps per epoch as ``fit`` computes them (for converting milestones)."""
    batch = min(batch_size, -(-num_images // num_devices) * num_devices)
    return math.ceil(num_images / batch)
