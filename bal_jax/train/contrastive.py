"""Instance-discrimination pretext (SimCLR, Chen et al. 2020) on the VGG16 backbone.

Usage::

  net = ContrastiveNet(width=0.125, rngs=nnx.Rngs(0))
  fit_contrastive(key, net, pool_u8, epochs=30, batch_size=256, learning_rate=1e-3,
                  mean=MEAN, std=STD)                                   # replaces SPEC Step 1
  feats_ND = predict_features(net, pool_u8, layer="block4", batch_size=512,
                              mean=MEAN, std=STD)                       # SPEC Step 2 input

An alternative to the paper's rotation pretext (issue 11): its features put images of one class
near each other, which is what BAL's K-means and CDD need. Each step draws two strong views of
every image of the batch (``views.two_views``: resized crop, flip, colour jitter, grey, inside
jit), embeds them with the backbone and an MLP projection head, and minimises NT-Xent: view i
must pick out its partner among the other 2B - 1 views by cosine similarity / temperature.

Same conventions as ``fit``: images stay on the device as uint8; one jitted step with traced
hyperparameters (one compilation per model and batch size); the losses are fetched and checked
for NaN once per epoch; the model is updated in place after every epoch. The last partial batch
of an epoch is dropped (a contrastive batch needs its negatives; the shuffle changes each
epoch). Optimizer: Adam (default; measured to learn faster than SGD in the few epochs a CPU
affords) or SGD with momentum, both with a linear warm-up and a cosine decay to 0.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from bal_jax import parallel
from bal_jax.models.conv import lecun_normal
from bal_jax.models.vgg import VGG16
from bal_jax.train.inputs import (
    check_images,
    check_key,
    check_model_input,
    num_devices,
    put,
    split_for,
    strong_copy,
)
from bal_jax.train.optim import make_optimizer, warmup_cosine_schedule
from bal_jax.train.step import constrain, take_batch
from bal_jax.train.views import DEFAULT_VIEWS, ViewParams, two_views

OPTIMIZERS = ("adam", "sgd")


class ContrastiveNet(nnx.Module):
    """The VGG16 backbone with a SimCLR projection head (Linear-BN-ReLU-Linear).

    ``features`` / ``layer_features`` are the backbone's (what BAL clusters); ``__call__``
    returns the projections the loss compares.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        width: float = 1.0,
        hidden_dim: int = 256,
        projection_dim: int = 128,
        conv_impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
          in_channels: channels of the input images.
          width: VGG16 channel multiplier.
          hidden_dim: width of the projection head's hidden layer.
          projection_dim: size of the projections the NT-Xent loss compares.
          conv_impl: formulation of the 3x3 convolutions.
          rngs: random streams.
        """
        if hidden_dim < 1 or projection_dim < 1:
            raise ValueError(
                f"hidden_dim and projection_dim must be positive, got {hidden_dim}, "
                f"{projection_dim}"
            )
        # The backbone's own 1-way head is never called (it only gets weight decay).
        self.backbone = VGG16(
            1, in_channels=in_channels, width=width, conv_impl=conv_impl, rngs=rngs
        )
        d = self.backbone.feature_dim
        self.proj_in = nnx.Linear(d, hidden_dim, kernel_init=lecun_normal, rngs=rngs)
        self.proj_bn = nnx.BatchNorm(hidden_dim, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.proj_out = nnx.Linear(hidden_dim, projection_dim, kernel_init=lecun_normal, rngs=rngs)
        self.in_channels = in_channels
        self.width = width
        self.feature_dim = d

    def features(self, x_NHWC: jax.Array, *, mask_N: jax.Array | None = None) -> jax.Array:
        """Backbone features (``VGG16.features``)."""
        return self.backbone.features(x_NHWC, mask_N=mask_N)

    def layer_features(
        self, x_NHWC: jax.Array, *, layer: str = "final", mask_N: jax.Array | None = None
    ) -> jax.Array:
        """Backbone features of a layer (``VGG16.layer_features``)."""
        return self.backbone.layer_features(x_NHWC, layer=layer, mask_N=mask_N)

    def __call__(self, x_NHWC: jax.Array) -> jax.Array:
        """(N, projection_dim) projections of normalised float images."""
        h = jax.nn.relu(self.proj_bn(self.proj_in(self.features(x_NHWC))))
        return self.proj_out(h)


def nt_xent(z_2BP: jax.Array, *, temperature: float | jax.Array) -> tuple[jax.Array, jax.Array]:
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. Eq. 1).

    Args:
      z_2BP: (2B, P) projections; rows i and B + i are the two views of image i.
      temperature: tau.

    Returns:
      ``(loss, correct)``: the mean over the 2B anchors of ``-log softmax`` of the partner's
      cosine similarity / tau among the other 2B - 1 rows, and how many anchors rank their
      partner first.
    """
    two_b = z_2BP.shape[0]
    b = two_b // 2
    z = z_2BP / jnp.maximum(jnp.linalg.norm(z_2BP, axis=-1, keepdims=True), 1e-12)
    sim = jnp.einsum("ip,jp->ij", z, z, precision=jax.lax.Precision.HIGHEST) / temperature
    sim = jnp.where(jnp.eye(two_b, dtype=bool), -jnp.inf, sim)
    partner = (jnp.arange(two_b) + b) % two_b
    loss = optax.softmax_cross_entropy_with_integer_labels(sim, partner).mean()
    correct = jnp.sum(jnp.argmax(sim, axis=-1) == partner)
    return loss, correct


class ContrastiveHparams(NamedTuple):
    # Traced, so that new values do not recompile the step.
    learning_rate: jax.Array
    momentum: jax.Array
    weight_decay: jax.Array
    temperature: jax.Array
    mean_C: jax.Array
    std_C: jax.Array
    total_steps: jax.Array
    warmup_steps: jax.Array


class ContrastiveState(NamedTuple):
    params: Any
    rest: Any
    opt_state: optax.OptState
    step: jax.Array


def _make_tx(optimizer: str, hp: ContrastiveHparams) -> optax.GradientTransformation:
    if optimizer == "sgd":
        return make_optimizer(
            learning_rate=hp.learning_rate,
            momentum=hp.momentum,
            weight_decay=hp.weight_decay,
            schedule="cosine",
            total_steps=hp.total_steps,
            warmup_steps=hp.warmup_steps,
        )
    lr = warmup_cosine_schedule(hp.learning_rate, hp.total_steps, hp.warmup_steps)
    return optax.adamw(lr, weight_decay=hp.weight_decay)


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "optimizer", "views", "batch_sharding"),
    donate_argnames=("state",),
)
def contrastive_step(
    graphdef,
    state: ContrastiveState,
    hp: ContrastiveHparams,
    images_BHWC_u8: jax.Array,
    key: jax.Array,
    *,
    optimizer: str,
    views: ViewParams,
    batch_sharding=None,
):
    """One optimizer step of the contrastive pretext on a uint8 batch.

    Args:
      graphdef: the ``ContrastiveNet``'s graph definition in training mode (static).
      state: parameters, BatchNorm statistics, optimizer state, step count.
      hp: traced hyperparameters.
      images_BHWC_u8: the batch.
      key: this step's key (the two views).
      optimizer: 'adam' or 'sgd' (static).
      views: augmentation strengths (static).
      batch_sharding: optional ``'data'`` sharding of the views.

    Returns:
      ``(new_state, {'loss', 'correct', 'count'})``.
    """
    x = two_views(key, images_BHWC_u8, params=views)
    mean = hp.mean_C.reshape(1, 1, 1, -1)
    std = hp.std_C.reshape(1, 1, 1, -1)
    x = constrain((x - mean) / std, batch_sharding)

    def loss_fn(params, rest):
        model = nnx.merge(graphdef, params, rest)
        loss, correct = nt_xent(model(x), temperature=hp.temperature)
        _, _, rest = nnx.split(model, nnx.Param, ...)
        return loss, (nnx.as_pure(rest), correct)

    (loss, (rest, correct)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.rest
    )
    tx = _make_tx(optimizer, hp)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "correct": correct, "count": jnp.asarray(x.shape[0])}
    return ContrastiveState(params, rest, opt_state, state.step + 1), metrics


@functools.partial(jax.jit, static_argnames=("num_images", "batch_size", "num_steps"))
def _epoch_order(key, epoch, *, num_images: int, batch_size: int, num_steps: int):
    # Drop-last shuffle: every step is a full batch of distinct images.
    shuffle_key, step_key = jax.random.split(jax.random.fold_in(key, epoch))
    perm = jax.random.permutation(shuffle_key, num_images).astype(jnp.int32)
    idx_SB = perm[: num_steps * batch_size].reshape(num_steps, batch_size)
    return idx_SB, jnp.ones_like(idx_SB, bool), step_key


def fit_contrastive(
    key: jax.Array,
    model: ContrastiveNet,
    images_NHWC_u8,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    mean,
    std,
    optimizer: str = "adam",
    temperature: float = 0.5,
    momentum: float = 0.9,
    weight_decay: float = 1e-6,
    warmup_fraction: float = 0.05,
    views: ViewParams = DEFAULT_VIEWS,
    mesh: Mesh | None = None,
    progress: Callable[[int, dict], Any] | None = None,
) -> dict:
    """Trains a ``ContrastiveNet`` in place with NT-Xent on two strong views per image.

    The instance-discrimination alternative to the rotation pretext of SPEC Step 1 (no labels
    are used). Epoch ``e`` shuffles with ``fold_in(key, e)``; step ``s`` draws its views from
    ``fold_in(step_key, s)``: same key, data and device -> identical parameters.

    Args:
      key: PRNG key.
      model: a ``ContrastiveNet``; updated in place.
      images_NHWC_u8: (N, H, W, C) uint8 images, N >= 2; moved to the device once.
      epochs: passes over the data (each of ``N // batch`` full batches).
      batch_size: images per step (2 views each; a multiple of the device count); capped at N.
      learning_rate: peak learning rate (after a linear warm-up, then cosine to 0).
      mean: per-channel mean in [0, 1] units.
      std: per-channel standard deviation in [0, 1] units.
      optimizer: 'adam' (AdamW, decoupled weight decay) or 'sgd' (momentum, coupled L2).
      temperature: NT-Xent temperature tau.
      momentum: SGD momentum (ignored by Adam).
      weight_decay: weight decay.
      warmup_fraction: share of the steps spent warming up.
      views: augmentation strengths.
      mesh: optional ``('data',)`` mesh for data parallelism.
      progress: optional ``callable(epoch, metrics)`` called after each epoch.

    Returns:
      ``{'loss': (E,), 'accuracy': (E,), 'learning_rate': (E,), 'steps_per_epoch': int,
      'batch_size': int, 'epochs': E}``; accuracy is the share of views whose nearest other
      view is their partner.

    Raises:
      FloatingPointError: the loss became NaN or inf (the message names the epoch and step).
    """
    key = check_key(key)
    images = check_images(images_NHWC_u8)
    check_model_input(model, images)
    n = images.shape[0]
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if n < 2:
        raise ValueError(f"contrastive training needs at least 2 images, got {n}")
    if not (isinstance(epochs, int | np.integer) and epochs >= 0):
        raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
    ndev = num_devices(mesh)
    if not (isinstance(batch_size, int | np.integer) and batch_size >= 2) or batch_size % ndev:
        raise ValueError(
            f"batch_size must be at least 2 and a multiple of the device count ({ndev}), "
            f"got {batch_size!r}"
        )
    for name, v in (
        ("learning_rate", learning_rate),
        ("temperature", temperature),
    ):
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive finite number, got {v}")
    for name, v in (("momentum", momentum), ("weight_decay", weight_decay)):
        if not (np.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v}")
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
    c = images.shape[-1]
    mean = np.asarray(mean, np.float32).reshape(-1)
    std = np.asarray(std, np.float32).reshape(-1)
    if mean.shape != (c,) or std.shape != (c,) or not np.all(std > 0):
        raise ValueError(f"mean and std need one value per channel ({c}) and std > 0")

    batch = min(int(batch_size), n // ndev * ndev)
    if batch < 2:
        raise ValueError(f"{n} images cannot fill a batch of 2 on {ndev} devices")
    num_steps = n // batch
    total_steps = epochs * num_steps
    warmup_steps = int(warmup_fraction * total_steps)
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    hp = ContrastiveHparams(
        f32(learning_rate),
        f32(momentum),
        f32(weight_decay),
        f32(temperature),
        f32(mean),
        f32(std),
        jnp.asarray(max(total_steps, 1), jnp.int32),
        jnp.asarray(warmup_steps, jnp.int32),
    )
    graphdef, params, rest = split_for(model, training=True)
    params, rest = jax.tree.map(strong_copy, (params, rest))
    tx = _make_tx(optimizer, hp)
    state = ContrastiveState(params, rest, tx.init(params), jnp.asarray(0, jnp.int32))
    state, hp = put((state, hp), mesh)
    images_dev = put(images, mesh)
    batch_sharding = None if mesh is None else parallel.batch_sharding(mesh)
    lr_at = warmup_cosine_schedule(learning_rate, max(total_steps, 1), warmup_steps)

    history = {"loss": [], "accuracy": [], "learning_rate": []}
    for epoch in range(epochs):
        idx_SB, mask_SB, step_key = put(
            _epoch_order(key, epoch, num_images=n, batch_size=batch, num_steps=num_steps), mesh
        )
        step_metrics = []
        for step in range(num_steps):
            batch_u8, _, _, step_key_s = take_batch(
                images_dev,
                None,
                idx_SB,
                mask_SB,
                step_key,
                jnp.asarray(step, jnp.int32),
                batch_sharding=batch_sharding,
            )
            state, m = contrastive_step(
                graphdef,
                state,
                hp,
                batch_u8,
                step_key_s,
                optimizer=optimizer,
                views=views,
                batch_sharding=batch_sharding,
            )
            step_metrics.append(m)
        # The one host sync per epoch.
        m = jax.tree.map(lambda *v: np.stack(v), *jax.device_get(step_metrics))
        bad = np.flatnonzero(~np.isfinite(m["loss"]))
        if bad.size:
            step = int(bad[0])
            raise FloatingPointError(
                f"contrastive pretext: non-finite loss {m['loss'][step]} at epoch {epoch} "
                f"(0-based), step {step} of {num_steps}; try a lower learning rate"
            )
        epoch_metrics = {
            "loss": float(np.mean(m["loss"])),
            "accuracy": float(m["correct"].sum() / max(int(m["count"].sum()), 1)),
            "learning_rate": float(lr_at(epoch * num_steps)),
        }
        for k, v in epoch_metrics.items():
            history[k].append(v)
        nnx.update(model, *jax.tree.map(jnp.array, (state.params, state.rest)))
        if progress is not None:
            progress(epoch, epoch_metrics)
    out = {k: np.asarray(v, np.float64) for k, v in history.items()}
    out.update(steps_per_epoch=num_steps, batch_size=batch, epochs=epochs)
    return out
