"""The jitted training step and the per-epoch batch plumbing around it.

Usage (what ``bal_jax.train.fit`` does each epoch)::

  idx_SB, mask_SB, step_key = epoch_order(key, epoch, num_images=n, batch_size=b, num_steps=s)
  for step in range(s):
      x_u8, y, mask, k = take_batch(images, labels, idx_SB, mask_SB, step_key, step, ...)
      state, metrics = train_step(graphdef, state, hp, x_u8, y, mask, k, augment=True, ...)

With ``steps_per_dispatch=G > 1`` ``fit`` instead gathers G batches at once (``take_batches``)
and runs them in one call (``train_steps``, a ``lax.scan`` of the same step): one dispatch per G
steps, which matters on a GPU at small widths where a step takes less time than its launch.

The step depends only on the model, the batch size, the image size and a few static switches
(schedule kind, Nesterov, EMA on/off, augmentation, rotation); every number (learning rate,
schedule boundaries and length, label smoothing, EMA decay, normalisation) is traced, so one
compilation serves a whole active-learning run.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

from bal_jax.train.augment import NUM_ROTATIONS, normalize, random_crop_flip, rotations
from bal_jax.train.optim import make_optimizer


class TrainState(NamedTuple):
    """Everything a training step replaces: parameters, other model state, optimizer state."""

    params: Any  # nnx.State of nnx.Param
    rest: Any  # nnx.State of everything else (BatchNorm statistics, RNG streams)
    opt_state: optax.OptState
    step: jax.Array  # int32 optimizer steps taken
    ema: Any  # (params, float leaves of rest) moving averages, or None when EMA is off


class Hparams(NamedTuple):
    # Traced (not static) so that changing them does not recompile.
    learning_rate: jax.Array
    boundaries: jax.Array  # (MAX_MILESTONES,) int32, in optimizer steps, padded with int32 max
    lr_decay: jax.Array
    momentum: jax.Array
    weight_decay: jax.Array
    mean_C: jax.Array
    std_C: jax.Array
    total_steps: jax.Array  # int32, the run's optimizer steps (cosine schedule)
    warmup_steps: jax.Array  # int32
    label_smoothing: jax.Array
    ema_decay: jax.Array
    ema_debias: jax.Array  # bool: the bias-corrected average (see Recipe.ema_debias)


def float_leaves(tree):
    """The floating-point leaves of a state (BatchNorm statistics), others replaced by None."""
    return jax.tree.map(lambda x: x if jnp.issubdtype(x.dtype, jnp.floating) else None, tree)


def ema_decay_at(step: jax.Array, decay: jax.Array, debias: jax.Array) -> jax.Array:
    """The weight EMA's decay at optimizer step ``step`` (0-based); see ``Recipe.ema_debias``.

    ``debias`` False: TensorFlow's warm-up ``min(decay, (1 + t) / (10 + t))``. True: the
    bias-corrected ``d * (1 - d**t) / (1 - d**(t + 1))``, under which
    ``avg_t = decay_t * avg_(t-1) + (1 - decay_t) * w_t`` is exactly
    ``sum_s d**(t-s) w_s / sum_s d**(t-s)`` (and ``avg_0 = w_0``).
    """
    t = jnp.asarray(step, jnp.float32)
    d = jnp.asarray(decay, jnp.float32)
    debiased = d * (1.0 - d**t) / (1.0 - d ** (t + 1.0))
    return jnp.where(debias, debiased, jnp.minimum(d, (1.0 + t) / (10.0 + t)))


def _masked_mean(values_N: jax.Array, mask_N: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(mask_N, values_N, 0.0)) / jnp.maximum(jnp.sum(mask_N), 1)


def constrain(x, sharding):
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def _train_step(
    graphdef,
    state: TrainState,
    hp: Hparams,
    images_BHWC_u8: jax.Array,
    labels_B: jax.Array | None,
    mask_B: jax.Array,
    key: jax.Array,
    *,
    augment: bool,
    rotation: bool,
    batch_sharding: NamedSharding | None,
    schedule: str = "multistep",
    nesterov: bool = False,
    flip: bool = True,
):
    """One SGD step on a uint8 batch (the body of ``train_step``).

    Args:
      graphdef: the model's graph definition in training mode (static).
      state: parameters, other model state (BatchNorm statistics) and optimizer state.
      hp: learning rate, schedule boundaries (in steps) and decay, momentum, weight decay and the
        normalisation mean/std (traced).
      images_BHWC_u8: the batch, uint8.
      labels_B: integer labels (ignored, may be None, when ``rotation``).
      mask_B: bool, real rows of the batch (padding rows are excluded from the loss, the metrics
        and the BatchNorm statistics).
      key: this step's key, split into augmentation and dropout keys.
      augment: random crop (pad 4) + flip.
      rotation: rotation pretext task: the batch becomes its four rot90 views, labels 0..3.
      batch_sharding: optional ``'data'`` sharding of the batch.
      schedule: 'multistep' or 'cosine' (see ``make_optimizer``).
      nesterov: Nesterov momentum.
      flip: the augmentation also flips horizontally (False: crop only).

    The loss is cross-entropy against targets smoothed by ``hp.label_smoothing``; with
    ``state.ema`` set, the moving averages of the parameters and of the BatchNorm statistics
    are updated with decay ``min(hp.ema_decay, (1 + t) / (10 + t))`` at step ``t`` or, with
    ``hp.ema_debias``, the bias-corrected ``d * (1 - d**t) / (1 - d**(t + 1))``.

    Returns:
      ``(new_state, metrics)``, metrics ``{'loss': masked mean CE, 'correct': count, 'count':
      real rows}``.
    """
    aug_key, dropout_key = jax.random.split(key)
    x_u8 = random_crop_flip(aug_key, images_BHWC_u8, flip=flip) if augment else images_BHWC_u8
    if rotation:
        # Augmented once, then all four rotations of the same crop go into the batch (SPEC Step 1).
        x_u8, labels_B = rotations(x_u8)
        mask_B = jnp.tile(mask_B, NUM_ROTATIONS)
    x = constrain(normalize(x_u8, mean=hp.mean_C, std=hp.std_C), batch_sharding)
    labels_B = constrain(labels_B, batch_sharding)
    mask_B = constrain(mask_B, batch_sharding)

    def loss_fn(params, rest):
        model = nnx.merge(graphdef, params, rest)
        logits = model(x, mask_N=mask_B, rngs=dropout_key)
        targets = optax.smooth_labels(
            jax.nn.one_hot(labels_B, logits.shape[-1]), hp.label_smoothing
        )
        # The loss is float32 whatever the compute dtype (the head already is; this states it).
        ce = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
        _, _, rest = nnx.split(model, nnx.Param, ...)
        return _masked_mean(ce, mask_B), (nnx.as_pure(rest), logits)

    (loss, (rest, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.rest
    )
    tx = make_optimizer(
        learning_rate=hp.learning_rate,
        boundaries=hp.boundaries,
        lr_decay=hp.lr_decay,
        momentum=hp.momentum,
        weight_decay=hp.weight_decay,
        schedule=schedule,
        total_steps=hp.total_steps,
        warmup_steps=hp.warmup_steps,
        nesterov=nesterov,
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema
    if ema is not None:
        decay = ema_decay_at(state.step, hp.ema_decay, hp.ema_debias)
        ema = jax.tree.map(
            lambda avg, new: decay * avg + (1.0 - decay) * new, ema, (params, float_leaves(rest))
        )
    correct = jnp.sum(jnp.where(mask_B, jnp.argmax(logits, -1) == labels_B, False))
    metrics = {"loss": loss, "correct": correct, "count": jnp.sum(mask_B)}
    return TrainState(params, rest, opt_state, state.step + 1, ema), metrics


@functools.partial(jax.jit, static_argnames=("num_images", "batch_size", "num_steps"))
def epoch_order(
    key: jax.Array, epoch: jax.Array, *, num_images: int, batch_size: int, num_steps: int
):
    """Shuffled batch indices of one epoch, padded to whole batches.

    Args:
      key: the run's PRNG key.
      epoch: epoch number (folded into ``key``).
      num_images: N.
      batch_size: B.
      num_steps: S = ceil(N / B).

    Returns:
      ``(idx_SB, mask_SB, step_key)``: image indices per step (padding rows point at image 0),
      the mask of real rows, and the key that ``train_step`` folds each step number into.
    """
    shuffle_key, step_key = jax.random.split(jax.random.fold_in(key, epoch))
    total = num_steps * batch_size
    perm = jax.random.permutation(shuffle_key, num_images).astype(jnp.int32)
    idx_SB = jnp.concatenate([perm, jnp.zeros((total - num_images,), jnp.int32)])
    mask_SB = jnp.arange(total) < num_images
    return idx_SB.reshape(num_steps, batch_size), mask_SB.reshape(num_steps, batch_size), step_key


@functools.partial(jax.jit, static_argnames=("batch_sharding",))
def take_batch(
    images_NHWC_u8: jax.Array,
    labels_N: jax.Array | None,
    idx_SB: jax.Array,
    mask_SB: jax.Array,
    step_key: jax.Array,
    step: jax.Array,
    *,
    batch_sharding: NamedSharding | None,
):
    """Gathers batch ``step`` of an epoch from the device-resident data set.

    A separate (cheap) jitted call, so that ``train_step`` does not depend on the data set size
    and compiles once per model and batch size for a whole active-learning run.

    Args:
      images_NHWC_u8: the whole training set on the device.
      labels_N: its labels, or None.
      idx_SB, mask_SB, step_key: from ``epoch_order``.
      step: step number within the epoch.
      batch_sharding: optional sharding of the batch along ``'data'``.

    Returns:
      ``(images_BHWC_u8, labels_B or None, mask_B, key)`` with ``key = fold_in(step_key, step)``.
    """
    idx_B = idx_SB[step]
    labels_B = None if labels_N is None else constrain(labels_N[idx_B], batch_sharding)
    images_B = constrain(images_NHWC_u8[idx_B], batch_sharding)
    mask_B = constrain(mask_SB[step], batch_sharding)
    return images_B, labels_B, mask_B, jax.random.fold_in(step_key, step)


# One optimizer step on a uint8 batch: augmentation, normalisation, forward, backward, SGD update
# (labels are ignored and replaced by rotation indices when rotation=True). It runs as one jitted
# call per step rather than a `lax.scan` over the epoch: XLA:CPU compiles the convolution filter
# gradient inside a while loop about 20x slower than outside one (measured here). Steps are
# dispatched asynchronously, so nothing waits for the device between steps.
train_step = jax.jit(
    _train_step,
    static_argnames=(
        "graphdef",
        "augment",
        "rotation",
        "batch_sharding",
        "schedule",
        "nesterov",
        "flip",
    ),
    donate_argnames=("state",),
)


def _train_steps(
    graphdef,
    state: TrainState,
    hp: Hparams,
    images_GBHWC_u8: jax.Array,
    labels_GB: jax.Array | None,
    mask_GB: jax.Array,
    keys_G: jax.Array,
    **static,
):
    """``G`` consecutive training steps in one call: a ``lax.scan`` of ``_train_step``.

    Args:
      graphdef, state, hp: as in ``_train_step``.
      images_GBHWC_u8: the G batches, stacked (from ``take_batches``).
      labels_GB: their labels, or None (rotation).
      mask_GB: real rows of each batch.
      keys_G: each step's key.
      **static: the static switches of ``_train_step``.

    Returns:
      ``(new_state, metrics)`` with each metric stacked to shape (G,).
    """

    def body(state, batch):
        images, labels, mask, key = batch
        return _train_step(graphdef, state, hp, images, labels, mask, key, **static)

    return lax.scan(body, state, (images_GBHWC_u8, labels_GB, mask_GB, keys_G))


# Several optimizer steps per dispatch (off by default: XLA:CPU runs the convolution filter
# gradient about 20x slower inside the scan's while loop; on a GPU one launch per G steps saves
# the per-step dispatch). Same arithmetic as G calls of `train_step`, up to float rounding.
train_steps = jax.jit(
    _train_steps,
    static_argnames=("graphdef", "augment", "rotation", "batch_sharding", "schedule", "nesterov"),
    donate_argnames=("state",),
)


@functools.partial(jax.jit, static_argnames=("count", "batch_sharding"))
def take_batches(
    images_NHWC_u8: jax.Array,
    labels_N: jax.Array | None,
    idx_SB: jax.Array,
    mask_SB: jax.Array,
    step_key: jax.Array,
    first: jax.Array,
    *,
    count: int,
    batch_sharding: NamedSharding | None,
):
    """Gathers batches ``first .. first + count - 1`` of an epoch, stacked, for ``train_steps``.

    Args:
      images_NHWC_u8, labels_N, idx_SB, mask_SB, step_key: as in ``take_batch``.
      first: the first step number (traced).
      count: G, the number of batches (static).
      batch_sharding: optional ``'data'`` sharding of one batch; the stack is sharded alike
        along its second axis.

    Returns:
      ``(images_GBHWC_u8, labels_GB or None, mask_GB, keys_G)``; ``keys_G[g]`` is the key
      ``take_batch`` gives step ``first + g``.
    """
    sharding = None
    if batch_sharding is not None:
        sharding = NamedSharding(batch_sharding.mesh, PartitionSpec(None, *batch_sharding.spec))
    steps_G = first + jnp.arange(count, dtype=jnp.int32)
    idx_GB = idx_SB[steps_G]
    labels_GB = None if labels_N is None else constrain(labels_N[idx_GB], sharding)
    images_GB = constrain(images_NHWC_u8[idx_GB], sharding)
    mask_GB = constrain(mask_SB[steps_G], sharding)
    keys_G = jax.vmap(jax.random.fold_in, (None, 0))(step_key, steps_G)
    return images_GB, labels_GB, mask_GB, keys_G
