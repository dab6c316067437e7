"""Host-side checks of training/inference inputs, hyperparameter packing and device placement."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from bal_jax import parallel
from bal_jax.precision import compute_dtype
from bal_jax.train.step import Hparams


def check_images(images, *, name: str = "images") -> np.ndarray | jax.Array:
    if not hasattr(images, "shape") or not hasattr(images, "dtype"):
        images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"{name} must be (N, H, W, C), got shape {tuple(images.shape)}")
    if images.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 (0..255), got dtype {images.dtype}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    return images


def check_model_input(model, images, *, square: bool = False) -> None:
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


def check_key(key) -> jax.Array:
    if not isinstance(key, jax.Array) or not (
        jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or key.shape == (2,)
    ):
        raise ValueError(f"key must be a JAX PRNG key (jax.random.key(seed)), got {key!r}")
    return key


def make_hparams(
    *,
    learning_rate,
    momentum,
    weight_decay,
    mean,
    std,
    channels,
    lr_decay=0.1,
    label_smoothing=0.0,
    ema_decay=0.0,
    ema_debias=False,
) -> Hparams:
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
    return Hparams(
        f32(learning_rate),
        jnp.zeros((0,), jnp.int32),
        f32(lr_decay),
        f32(momentum),
        f32(weight_decay),
        f32(mean),
        f32(std),
        jnp.asarray(1, jnp.int32),
        jnp.asarray(0, jnp.int32),
        f32(label_smoothing),
        f32(ema_decay),
        jnp.asarray(bool(ema_debias)),
    )


def num_devices(mesh: Mesh | None) -> int:
    return 1 if mesh is None else mesh.size


def put(tree, mesh: Mesh | None):
    """Replicates arrays on the mesh, or puts them on the first device without one."""
    if mesh is None:
        return jax.device_put(tree, jax.local_devices()[0])
    return parallel.replicate(tree, mesh)


def strong_copy(x):
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jnp.array(x)
    return jnp.array(x, dtype=x.dtype)


def split_for(model, *, training: bool, dtype=None):
    """(graphdef, params, rest) of a view of the model in train or eval mode.

    Args:
      model: an NNX module (its own mode and dtype are not changed).
      training: batch statistics and dropout on (True) or running statistics, no dropout.
      dtype: compute dtype for the view (``bal_jax.precision``), or None for the model's own.

    Returns:
      The graph definition (static) and the pure parameter and other states.
    """
    modes = {} if dtype is None else {"dtype": compute_dtype(dtype)}
    view = nnx.view(
        model,
        use_running_average=not training,
        deterministic=not training,
        raise_if_not_found=False,
        **modes,
    )
    graphdef, params, rest = nnx.split(view, nnx.Param, ...)
    # Pure states (plain arrays): Variables rebuilt by nnx.merge inside each trace can be updated
    # there (BatchNorm statistics), which Variables captured from an outer trace cannot.
    return graphdef, nnx.as_pure(params), nnx.as_pure(rest)
