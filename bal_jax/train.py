"""Training and pool inference for bal_jax networks: jitted, device-resident and reproducible.

Usage::

  key = jax.random.key(0)
  pretext_key, main_key = jax.random.split(key)
  rot = rotation_net(width=0.25, rngs=nnx.Rngs(1))
  fit_rotation(pretext_key, rot, pool_u8, epochs=120, batch_size=256, learning_rate=0.1,
               milestones=(30, 60, 90), mean=MEAN, std=STD)                    # SPEC Step 1
  feats_ND = predict(rot, pool_u8, batch_size=512, mean=MEAN, std=STD).features_ND  # Step 2
  model = VGG16(10, width=0.25, rngs=nnx.Rngs(2))
  metrics = fit(main_key, model, x_u8, y, epochs=100, batch_size=128, learning_rate=0.1,
                milestones=(30, 60, 90), mean=MEAN, std=STD)                  # Step 6
  acc = evaluate(model, test_u8, test_y, batch_size=512, mean=MEAN, std=STD)

Training (``fit``, ``fit_rotation``):
- Images stay on the device as uint8 for the whole run; each step is one jitted call that gathers
  its batch by index, applies random crop (pad 4) + horizontal flip and ``(x / 255 - mean) / std``
  on the device. No host-to-device copy per step and no host sync per step (steps are dispatched
  asynchronously): the losses are fetched once per epoch, checked for NaN/inf, and the first bad
  step is reported. (A whole-epoch ``lax.scan`` was measured and rejected: XLA:CPU runs the
  convolution filter gradient about 20x slower inside a while loop.)
- SGD with momentum, L2 weight decay added to the gradient (PyTorch's ``SGD(weight_decay=...)``,
  applied to every parameter as in the authors' code), multistep learning rate (the values of
  ``optax.piecewise_constant_schedule``, with traced boundaries; milestones in epochs), softmax
  cross-entropy.
- The last partial batch is padded and masked: the loss, the accuracy and the BatchNorm batch
  statistics use only the real rows, so an epoch matches PyTorch's ``drop_last=False`` loader while
  every step has the same shape. When the data set is smaller than ``batch_size`` the batch shrinks
  to the data set (rounded up to the device count) instead of computing on padding.
- Randomness: one key per call; epoch ``e`` uses ``fold_in(key, e)``, split into a shuffle key and
  a step key, and step ``s`` uses ``fold_in(step_key, s)`` (split into augmentation and dropout
  keys). Same key, data and device -> bit-identical parameters.
- The optimizer (``optax`` state) is fresh in every call (``nnx.Optimizer`` is not used: its
  ``tx`` is static in the graph definition, so a new one per call would recompile). The model is
  updated in place after every epoch; after a NaN it keeps the last finite epoch. Its train/eval
  mode attributes are not touched.
- Compilation: the training step depends only on the model configuration, the batch size and the
  image size, so it compiles once for a whole active-learning run (learning rate, milestones and
  data set size are traced); a new data set size recompiles only the small batch-gather function
  (and, below one batch, the step for the shrunken batch).

Inference (``predict``, ``predict_mc_dropout``, ``rotation_losses``, ``evaluate``) runs in eval mode
(BatchNorm running statistics) over fixed-size batches (the last one padded), so one compilation
serves every pool size. The pool may live on the host: each batch is copied to the device as it is
needed, so a pool larger than device memory works. Results are NumPy arrays on the host.

Data parallelism: pass ``mesh=bal_jax.parallel.make_mesh()``. Training replicates the images and
parameters on every device and shards each batch along ``'data'`` (BatchNorm statistics and
gradients are then global, so the result matches one device up to float rounding); inference shards
each batch. ``batch_size`` must be a multiple of the device count. After ``fit`` with a mesh the
model's arrays are replicated over that mesh (pass the same mesh to the inference functions, or
none: they then copy the parameters to the first device).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from bal_jax import parallel

# Random crop padding for 32x32 data (SPEC Step 1 and the authors' CIFAR transforms).
CROP_PADDING = 4
NUM_ROTATIONS = 4
# Milestone lists are padded to this length (with a step never reached), so their number does not
# change the compiled training step.
MAX_MILESTONES = 8


class Predictions(NamedTuple):
    """Pool inference results, NumPy arrays on the host in pool order."""

    logits_NC: np.ndarray
    features_ND: np.ndarray


class TrainState(NamedTuple):
    """Everything a training step replaces: parameters, other model state, optimizer state."""

    params: Any  # nnx.State of nnx.Param
    rest: Any  # nnx.State of everything else (BatchNorm statistics, RNG streams)
    opt_state: optax.OptState


class _Hparams(NamedTuple):
    # Traced (not static) so that changing them does not recompile.
    learning_rate: jax.Array
    boundaries: jax.Array  # (MAX_MILESTONES,) int32, in optimizer steps, padded with int32 max
    lr_decay: jax.Array
    momentum: jax.Array
    weight_decay: jax.Array
    mean_C: jax.Array
    std_C: jax.Array


# --------------------------------------------------------------------------------------------
# Pure building blocks (jittable).


def normalize(images_NHWC_u8: jax.Array, *, mean: jax.Array, std: jax.Array) -> jax.Array:
    """``(x / 255 - mean) / std`` per channel, as float32.

    Args:
      images_NHWC_u8: uint8 images.
      mean: (C,) channel means in [0, 1] units.
      std: (C,) channel standard deviations in [0, 1] units.

    Returns:
      float32 images of the same shape.
    """
    mean = jnp.asarray(mean, jnp.float32).reshape(1, 1, 1, -1)
    std = jnp.asarray(std, jnp.float32).reshape(1, 1, 1, -1)
    return (images_NHWC_u8.astype(jnp.float32) / 255.0 - mean) / std


def random_crop_flip(key: jax.Array, images_NHWC: jax.Array, *, padding: int = CROP_PADDING):
    """Random crop after zero padding, then a random horizontal flip, per image.

    Equivalent to torchvision's ``RandomCrop(H, padding=padding)`` + ``RandomHorizontalFlip()``
    applied to uint8 images (the padding is pixel value 0, before normalisation).

    Args:
      key: PRNG key.
      images_NHWC: images of any dtype.
      padding: pixels of zero padding on each side before cropping.

    Returns:
      Augmented images, same shape and dtype.
    """
    n, h, w, c = images_NHWC.shape
    offset_key, flip_key = jax.random.split(key)
    offsets_N2 = jax.random.randint(offset_key, (n, 2), 0, 2 * padding + 1)
    flip_N = jax.random.bernoulli(flip_key, 0.5, (n,))
    padded = jnp.pad(images_NHWC, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    crops = jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c)))(
        padded, offsets_N2
    )
    return jnp.where(flip_N.reshape(n, 1, 1, 1), crops[:, :, ::-1, :], crops)


def rotations(images_NHWC: jax.Array) -> tuple[jax.Array, jax.Array]:
    """All four ``rot90`` views of each image (SPEC Step 1).

    Args:
      images_NHWC: square images (H == W).

    Returns:
      ``(views_RHWC, labels_R)`` with ``R = 4 N``: view ``k * N + i`` is image ``i`` rotated by
      ``k * 90`` degrees (``jnp.rot90`` on the (H, W) axes, the direction of ``torch.rot90`` on
      (H, W)) and its label is ``k``.
    """
    n = images_NHWC.shape[0]
    views = jnp.concatenate([jnp.rot90(images_NHWC, k, axes=(1, 2)) for k in range(4)], axis=0)
    labels = jnp.repeat(jnp.arange(NUM_ROTATIONS, dtype=jnp.int32), n)
    return views, labels


def multistep_schedule(
    learning_rate: float | jax.Array,
    boundaries: Sequence[int] | jax.Array,
    lr_decay: float | jax.Array,
) -> optax.Schedule:
    """Multistep learning rate: ``learning_rate * lr_decay ** #{b in boundaries : b <= step}``.

    The values of ``optax.piecewise_constant_schedule(learning_rate, {b: lr_decay ...})`` (PyTorch's
    ``MultiStepLR``), written so that the boundaries and factors may be traced arrays: a new data
    set size (which moves the boundaries, counted in steps) then does not recompile the training
    step.

    Args:
      learning_rate: initial rate.
      boundaries: optimizer steps at which the rate is multiplied by ``lr_decay``.
      lr_decay: the factor.

    Returns:
      An optax schedule ``step -> rate``.
    """
    boundaries = jnp.asarray(boundaries, jnp.int32).reshape(-1)

    def schedule(count):
        return learning_rate * lr_decay ** jnp.sum(count >= boundaries)

    return schedule


def make_optimizer(
    *,
    learning_rate: float | jax.Array,
    boundaries: Sequence[int] | jax.Array = (),
    lr_decay: float | jax.Array = 0.1,
    momentum: float | jax.Array = 0.9,
    weight_decay: float | jax.Array = 5e-4,
) -> optax.GradientTransformation:
    """SGD with momentum, coupled L2 weight decay and a multistep schedule (PyTorch semantics).

    ``update = -lr_t * trace``, ``trace = momentum * trace + grad + weight_decay * param``, with
    ``lr_t = multistep_schedule(learning_rate, boundaries, lr_decay)(t)``: PyTorch's
    ``SGD(momentum, weight_decay)`` + ``MultiStepLR``. All arguments may be traced.

    Args:
      learning_rate: initial learning rate.
      boundaries: optimizer steps at which the learning rate is multiplied by ``lr_decay``.
      lr_decay: multiplicative decay.
      momentum: heavy-ball momentum.
      weight_decay: L2 coefficient.

    Returns:
      An optax transformation.
    """
    schedule = multistep_schedule(learning_rate, boundaries, lr_decay)
    return optax.chain(
        optax.add_decayed_weights(weight_decay), optax.sgd(schedule, momentum=momentum)
    )


def _masked_mean(values_N: jax.Array, mask_N: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(mask_N, values_N, 0.0)) / jnp.maximum(jnp.sum(mask_N), 1)


def _constrain(x, sharding):
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def _train_step(
    graphdef,
    state: TrainState,
    hp: _Hparams,
    images_BHWC_u8: jax.Array,
    labels_B: jax.Array | None,
    mask_B: jax.Array,
    key: jax.Array,
    *,
    augment: bool,
    rotation: bool,
    batch_sharding: NamedSharding | None,
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

    Returns:
      ``(new_state, metrics)``, metrics ``{'loss': masked mean CE, 'correct': count, 'count':
      real rows}``.
    """
    aug_key, dropout_key = jax.random.split(key)
    x_u8 = random_crop_flip(aug_key, images_BHWC_u8) if augment else images_BHWC_u8
    if rotation:
        # Augmented once, then all four rotations of the same crop go into the batch (SPEC Step 1).
        x_u8, labels_B = rotations(x_u8)
        mask_B = jnp.tile(mask_B, NUM_ROTATIONS)
    x = _constrain(normalize(x_u8, mean=hp.mean_C, std=hp.std_C), batch_sharding)
    labels_B = _constrain(labels_B, batch_sharding)
    mask_B = _constrain(mask_B, batch_sharding)

    def loss_fn(params, rest):
        model = nnx.merge(graphdef, params, rest)
        logits = model(x, mask_N=mask_B, rngs=dropout_key)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels_B)
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
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    correct = jnp.sum(jnp.where(mask_B, jnp.argmax(logits, -1) == labels_B, False))
    metrics = {"loss": loss, "correct": correct, "count": jnp.sum(mask_B)}
    return TrainState(params, rest, opt_state), metrics


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
    labels_B = None if labels_N is None else _constrain(labels_N[idx_B], batch_sharding)
    images_B = _constrain(images_NHWC_u8[idx_B], batch_sharding)
    mask_B = _constrain(mask_SB[step], batch_sharding)
    return images_B, labels_B, mask_B, jax.random.fold_in(step_key, step)


# One optimizer step on a uint8 batch: augmentation, normalisation, forward, backward, SGD update
# (labels are ignored and replaced by rotation indices when rotation=True). It runs as one jitted
# call per step rather than a `lax.scan` over the epoch: XLA:CPU compiles the convolution filter
# gradient inside a while loop about 20x slower than outside one (measured here). Steps are
# dispatched asynchronously, so nothing waits for the device between steps.
train_step = jax.jit(
    _train_step,
    static_argnames=("graphdef", "augment", "rotation", "batch_sharding"),
    donate_argnames=("state",),
)


# --------------------------------------------------------------------------------------------
# Input checks and placement (host side).


def _check_images(images, *, name: str = "images") -> np.ndarray | jax.Array:
    if not hasattr(images, "shape") or not hasattr(images, "dtype"):
        images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"{name} must be (N, H, W, C), got shape {tuple(images.shape)}")
    if images.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 (0..255), got dtype {images.dtype}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    return images


def _check_model_input(model, images, *, square: bool = False) -> None:
    _, h, w, c = images.shape
    in_channels = getattr(model, "in_channels", c)
    if c != in_channels:
        raise ValueError(f"the model takes {in_channels}-channel images, got {c} channels")
    if h % 32 or w % 32:
        raise ValueError(
            f"images are {h}x{w}; VGG16 needs height and width multiples of 32: pad them (e.g. "
            "28x28 -> 32x32 with 2 zero pixels on each side)"
        )
    if square and h != w:
        raise ValueError(f"rotation pretext needs square images, got {h}x{w}")


def _check_key(key) -> jax.Array:
    if not isinstance(key, jax.Array) or not (
        jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or key.shape == (2,)
    ):
        raise ValueError(f"key must be a JAX PRNG key (jax.random.key(seed)), got {key!r}")
    return key


def _hparams(
    *, learning_rate, momentum, weight_decay, mean, std, channels, lr_decay=0.1
) -> _Hparams:
    mean = np.asarray(mean, np.float32).reshape(-1)
    std = np.asarray(std, np.float32).reshape(-1)
    if mean.shape != (channels,) or std.shape != (channels,):
        raise ValueError(
            f"mean and std need one value per channel ({channels}), "
            f"got {mean.shape} and {std.shape}"
        )
    if not (np.all(np.isfinite(mean)) and np.all(std > 0) and np.all(np.isfinite(std))):
        raise ValueError(f"mean must be finite and std positive, got mean={mean}, std={std}")
    for name, v in (("learning_rate", learning_rate), ("momentum", momentum)):
        if not (np.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v}")
    if not (np.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay}")
    if not (np.isfinite(lr_decay) and lr_decay >= 0):
        raise ValueError(f"lr_decay must be a finite number >= 0, got {lr_decay}")
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    return _Hparams(
        f32(learning_rate),
        jnp.zeros((0,), jnp.int32),
        f32(lr_decay),
        f32(momentum),
        f32(weight_decay),
        f32(mean),
        f32(std),
    )


def _num_devices(mesh: Mesh | None) -> int:
    return 1 if mesh is None else mesh.size


def _put(tree, mesh: Mesh | None):
    """Replicates arrays on the mesh, or puts them on the first device without one."""
    if mesh is None:
        return jax.device_put(tree, jax.local_devices()[0])
    return parallel.replicate(tree, mesh)


def _strong_copy(x):
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jnp.array(x)
    return jnp.array(x, dtype=x.dtype)


def _split_for(model, *, training: bool):
    view = nnx.view(
        model,
        use_running_average=not training,
        deterministic=not training,
        raise_if_not_found=False,
    )
    graphdef, params, rest = nnx.split(view, nnx.Param, ...)
    # Pure states (plain arrays): Variables rebuilt by nnx.merge inside each trace can be updated
    # there (BatchNorm statistics), which Variables captured from an outer trace cannot.
    return graphdef, nnx.as_pure(params), nnx.as_pure(rest)


# --------------------------------------------------------------------------------------------
# Training.


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
) -> dict:
    key = _check_key(key)
    images = _check_images(images)
    _check_model_input(model, images, square=rotation)
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
    ndev = _num_devices(mesh)
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
    hp = _hparams(
        learning_rate=learning_rate,
        lr_decay=lr_decay,
        momentum=momentum,
        weight_decay=weight_decay,
        mean=mean,
        std=std,
        channels=images.shape[-1],
    )

    # Small data sets: a smaller batch computes the same masked step without the padding.
    batch = min(int(batch_size), -(-n // ndev) * ndev)
    num_steps = -(-n // batch)
    boundaries = tuple(m * num_steps for m in milestones)

    graphdef, params, rest = _split_for(model, training=True)
    tx = make_optimizer(learning_rate=learning_rate, boundaries=boundaries, lr_decay=lr_decay)
    never = np.iinfo(np.int32).max
    hp = hp._replace(
        boundaries=jnp.asarray(
            boundaries + (never,) * (MAX_MILESTONES - len(boundaries)), jnp.int32
        )
    )
    # train_step donates its state: start from copies so the model's own arrays stay valid (and
    # strongly typed: a weak-typed leaf, e.g. set from a Python scalar, would recompile the step).
    params, rest = jax.tree.map(_strong_copy, (params, rest))
    state = TrainState(params, rest, tx.init(params))
    state, hp = _put((state, hp), mesh)
    images_dev = _put(images, mesh)
    labels_dev = None if labels is None else _put(np.asarray(labels_np, np.int32), mesh)
    batch_sharding = None if mesh is None else parallel.batch_sharding(mesh)

    history = {"loss": [], "accuracy": [], "learning_rate": []}
    for epoch in range(epochs):
        idx_SB, mask_SB, step_key = _put(
            epoch_order(key, epoch, num_images=n, batch_size=batch, num_steps=num_steps), mesh
        )
        step_metrics = []
        for step in range(num_steps):
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
                graphdef,
                state,
                hp,
                batch_u8,
                batch_labels,
                batch_mask,
                step_key_s,
                augment=bool(augment),
                rotation=rotation,
                batch_sharding=batch_sharding,
            )
            step_metrics.append(m)
        # The one host sync per epoch.
        m = jax.tree.map(lambda *v: np.stack(v), *jax.device_get(step_metrics))
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
            "learning_rate": float(learning_rate)
            * float(lr_decay) ** sum(epoch >= mi for mi in milestones),
        }
        for k, v in epoch_metrics.items():
            history[k].append(v)
        # The model follows training epoch by epoch (copies: the next step donates `state`); after a
        # NaN it keeps the last finite epoch.
        nnx.update(model, *jax.tree.map(jnp.array, (state.params, state.rest)))
        if progress is not None:
            progress(epoch, epoch_metrics)
    out = {k: np.asarray(v, np.float64) for k, v in history.items()}
    out["steps_per_epoch"] = num_steps
    out["batch_size"] = batch
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
    mesh: Mesh | None = None,
    progress: Callable[[int, dict], Any] | None = None,
) -> dict:
    """Trains a classifier in place with SGD + multistep schedule (SPEC Step 6).

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
      mesh: optional ``('data',)`` mesh for data parallelism.
      progress: optional ``callable(epoch, metrics)`` called after each epoch.

    Returns:
      ``{'loss': (epochs,), 'accuracy': (epochs,), 'learning_rate': (epochs,), 'steps_per_epoch':
      int, 'batch_size': int}``; loss and accuracy are means over the epoch's (augmented) samples,
      learning_rate is the rate the epoch ran at.

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
        mesh=mesh,
        progress=progress,
        stage="train",
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
    mesh: Mesh | None = None,
    progress: Callable[[int, dict], Any] | None = None,
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
      augment, mesh, progress: as in ``fit``.

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
        mesh=mesh,
        progress=progress,
        stage="pretext",
    )


# --------------------------------------------------------------------------------------------
# Inference.


@functools.partial(jax.jit, static_argnames=("graphdef", "out_sharding"))
def _predict_batch(graphdef, params, rest, mean_C, std_C, images_BHWC_u8, *, out_sharding):
    model = nnx.merge(graphdef, params, rest)
    feats = model.features(normalize(images_BHWC_u8, mean=mean_C, std=std_C))
    logits = model.classify(feats)
    return _constrain(logits, out_sharding), _constrain(feats, out_sharding)


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
    return _constrain(probs_TBC, out_sharding)


@functools.partial(jax.jit, static_argnames=("graphdef", "out_sharding"))
def _rotation_loss_batch(graphdef, params, rest, mean_C, std_C, images_BHWC_u8, *, out_sharding):
    model = nnx.merge(graphdef, params, rest)
    views, labels = rotations(images_BHWC_u8)
    logits = model(normalize(views, mean=mean_C, std=std_C))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return _constrain(ce.reshape(NUM_ROTATIONS, -1).mean(axis=0), out_sharding)


def _inference(model, images, *, batch_size, mean, std, mesh, run_batch, square=False):
    """Calls ``run_batch(graphdef, params, rest, mean, std, x_u8, start, out_sharding)``."""
    images = _check_images(images)
    _check_model_input(model, images, square=square)
    ndev = _num_devices(mesh)
    if not (isinstance(batch_size, int | np.integer) and batch_size >= 1) or batch_size % ndev:
        raise ValueError(
            f"batch_size must be a positive multiple of the device count ({ndev}), "
            f"got {batch_size!r}"
        )
    hp = _hparams(
        learning_rate=0.0,
        momentum=0.0,
        weight_decay=0.0,
        mean=mean,
        std=std,
        channels=images.shape[-1],
    )
    graphdef, params, rest = _split_for(model, training=False)
    params, rest, mean_C, std_C = _put((params, rest, hp.mean_C, hp.std_C), mesh)
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
) -> Predictions:
    """Logits and backbone features of a pool, in eval mode (SPEC Steps 2 and 5).

    Args:
      model: a ``VGG16``; its train/eval mode is not changed.
      images_NHWC_u8: (N, H, W, C) uint8 images (host or device; read batch by batch).
      batch_size: images per forward pass (fixed; the last batch is padded).
      mean: per-channel mean in [0, 1] units.
      std: per-channel standard deviation in [0, 1] units.
      mesh: optional ``('data',)`` mesh; each batch is sharded along it.

    Returns:
      ``Predictions(logits_NC, features_ND)`` as float32 NumPy arrays in input order.
    """

    def run(graphdef, params, rest, mean_C, std_C, x, start, out_sharding):
        return _predict_batch(graphdef, params, rest, mean_C, std_C, x, out_sharding=out_sharding)

    logits, feats = _inference(
        model, images_NHWC_u8, batch_size=batch_size, mean=mean, std=std, mesh=mesh, run_batch=run
    )
    return Predictions(logits, feats)


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

    Returns:
      (T, N, num_classes) float32 NumPy array of softmax probabilities.
    """
    key = _check_key(key)
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
        model, images_NHWC_u8, batch_size=batch_size, mean=mean, std=std, mesh=mesh, run_batch=run
    )


def rotation_losses(
    model: nnx.Module,
    images_NHWC_u8,
    *,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    mesh: Mesh | None = None,
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

    Returns:
      Accuracy in [0, 1].
    """
    labels = np.asarray(labels_N)
    n = np.shape(images_NHWC_u8)[0] if np.ndim(images_NHWC_u8) else -1
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match images, got {labels.shape}")
    logits = predict(
        model, images_NHWC_u8, batch_size=batch_size, mean=mean, std=std, mesh=mesh
    ).logits_NC
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def steps_per_epoch(num_images: int, batch_size: int, *, num_devices: int = 1) -> int:
    """Optimizer steps per epoch as ``fit`` computes them (for converting milestones)."""
    batch = min(batch_size, -(-num_images // num_devices) * num_devices)
    return math.ceil(num_images / batch)
