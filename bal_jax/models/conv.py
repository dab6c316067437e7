"""3x3 'SAME' convolution that picks its formulation per layer size.

Usage::

  conv = Conv3x3(64, 128, rngs=nnx.Rngs(0))   # same parameters as nnx.Conv(64, 128, (3, 3))
  y_NHWC = conv(x_NHWC)

Why: XLA's CPU convolution is catastrophically slow on tiny spatial maps. Measured on the project's
2-core Xeon (AVX-512), batch 128, 512->512 channels on a 2x2 map: forward 2.6 s with
`lax.conv_general_dilated` versus 0.035 s as im2col + one matmul (about 80x); the backward pass for
the input gradient is just as slow, the filter gradient is not. At 4x4 and larger the two
formulations are within noise of each other (XLA slightly ahead in the forward pass), and at 16x16
and 32x32 XLA's convolution wins clearly because im2col materialises a 9x larger patch matrix. The
first layer (3 input channels) is cheaper as im2col: its patch matrix is only 27 channels wide.

So on CPU ``impl='auto'`` uses im2col when ``H * W <= IM2COL_MAX_PIXELS`` or
``in_features <= IM2COL_MAX_IN_FEATURES``, XLA's convolution otherwise. On GPU and TPU, ``'auto'``
always uses XLA's convolution (cuDNN / the TPU convolution units are the fast path there).

Both formulations compute the same sum in a different order, so results agree with ``nnx.Conv`` to
float32 rounding (tests check it for values and gradients).

``dtype`` is the compute dtype (``bal_jax.precision``): the input, kernel and bias are cast to it
and the output has it, while the parameters stay float32. ``nnx.view(conv, dtype=...)`` changes
it on a copy that shares the parameters.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from bal_jax.precision import compute_dtype

_ZEROS = nnx.initializers.zeros_init()

# Thresholds for impl='auto' on CPU (see module docstring for the measurements).
IM2COL_MAX_PIXELS = 4
IM2COL_MAX_IN_FEATURES = 4

_IMPLS = ("auto", "xla", "im2col")

# Initialisation draws in chunks of this many values, so that one compiled sampler serves every
# parameter shape (drawing each shape directly compiles a truncated-normal sampler per shape:
# about 1 s each on the project's CPU, 10+ s to build one VGG16).
_INIT_CHUNK = 1 << 16
# Standard deviation of a unit normal truncated to [-2, 2] (as in jax.nn.initializers).
_TRUNCATED_STD = 0.87962566103423978


@functools.partial(jax.jit, static_argnames=("dtype",))
def _truncated_normal_chunk(key: jax.Array, dtype) -> jax.Array:
    return jax.random.truncated_normal(key, -2.0, 2.0, (_INIT_CHUNK,), dtype)


def lecun_normal(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """LeCun normal initialiser (the distribution of ``nnx.initializers.lecun_normal()``).

    Truncated normal on [-2, 2] standard deviations, scaled to variance ``1 / fan_in`` with
    ``fan_in = prod(shape[:-1])`` (kernel layouts HWIO and (in, out)). Values are drawn in
    fixed-size chunks (``fold_in(key, chunk)``) so every shape reuses one compiled sampler.

    Args:
      key: PRNG key.
      shape: parameter shape; the last axis is the output axis.
      dtype: parameter dtype.

    Returns:
      The initial parameter.
    """
    shape = tuple(shape)
    n = math.prod(shape)
    fan_in = max(1, n // max(1, shape[-1]))
    stddev = math.sqrt(1.0 / fan_in) / _TRUNCATED_STD
    chunks = [
        _truncated_normal_chunk(jax.random.fold_in(key, i), dtype)
        for i in range(-(-n // _INIT_CHUNK))
    ]
    if any(isinstance(c, jax.core.Tracer) for c in chunks):  # under jit / eval_shape: stay traced
        flat = jnp.concatenate(chunks)[:n]
    else:  # eagerly: join on the host rather than compile a concatenate per shape
        flat = jnp.asarray(np.concatenate(jax.device_get(chunks))[:n])
    return (flat * stddev).astype(dtype).reshape(shape)


def conv3x3_xla(x_NHWC: jax.Array, kernel_33IO: jax.Array) -> jax.Array:
    """3x3 'SAME' convolution, stride 1, with XLA's convolution op.

    Args:
      x_NHWC: input, channels last.
      kernel_33IO: kernel in HWIO layout (the layout of ``nnx.Conv``).

    Returns:
      (N, H, W, O) output, without bias.
    """
    return lax.conv_general_dilated(
        x_NHWC,
        kernel_33IO,
        window_strides=(1, 1),
        padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def conv3x3_im2col(x_NHWC: jax.Array, kernel_33IO: jax.Array) -> jax.Array:
    """3x3 'SAME' convolution, stride 1, as im2col followed by one matrix product.

    The nine shifted views of the zero-padded input are concatenated on the channel axis in (dy, dx)
    row-major order, which matches ``kernel_33IO.reshape(9 * I, O)``.

    Args:
      x_NHWC: input, channels last.
      kernel_33IO: kernel in HWIO layout.

    Returns:
      (N, H, W, O) output, without bias.
    """
    n, h, w, c = x_NHWC.shape
    out_features = kernel_33IO.shape[-1]
    xp = jnp.pad(x_NHWC, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols_NHWK = jnp.concatenate(
        [xp[:, dy : dy + h, dx : dx + w, :] for dy in range(3) for dx in range(3)], axis=-1
    )
    y = cols_NHWK.reshape(n * h * w, 9 * c) @ kernel_33IO.reshape(9 * c, out_features)
    return y.reshape(n, h, w, out_features)


def choose_impl(height: int, width: int, in_features: int, *, backend: str | None = None) -> str:
    """The formulation ``impl='auto'`` uses for one layer: ``'im2col'`` or ``'xla'``.

    Args:
      height: spatial height of the layer's input.
      width: spatial width of the layer's input.
      in_features: input channels.
      backend: JAX backend name; defaults to ``jax.default_backend()``.

    Returns:
      The name of the formulation.
    """
    backend = jax.default_backend() if backend is None else backend
    if backend != "cpu":
        return "xla"
    if height * width <= IM2COL_MAX_PIXELS or in_features <= IM2COL_MAX_IN_FEATURES:
        return "im2col"
    return "xla"


class Conv3x3(nnx.Module):
    """3x3 'SAME' convolution with stride 1, a drop-in for ``nnx.Conv(in, out, (3, 3))``.

    Parameters (names, shapes, layout, initial distributions) are those of ``nnx.Conv``, so a state
    dict moves between the two; outputs agree to float32 rounding.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        impl: str = "auto",
        dtype="float32",
        kernel_init: nnx.Initializer = lecun_normal,
        bias_init: nnx.Initializer = _ZEROS,
        rngs: nnx.Rngs,
    ):
        """Builds the layer.

        Args:
          in_features: input channels.
          out_features: output channels.
          use_bias: add a learned bias.
          impl: ``'auto'`` (per-layer choice, see module docstring), ``'xla'`` or ``'im2col'``.
          dtype: compute dtype, ``'float32'`` or ``'bfloat16'``; parameters are float32 either way.
          kernel_init: kernel initialiser; the default has the distribution of ``nnx.Conv``'s
            default and is fast to build (see ``lecun_normal``).
          bias_init: bias initialiser (``nnx.Conv``'s default).
          rngs: random streams; draws from ``rngs.params``.
        """
        if impl not in _IMPLS:
            raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
        self.kernel = nnx.Param(kernel_init(rngs.params(), (3, 3, in_features, out_features)))
        self.bias = nnx.Param(bias_init(rngs.params(), (out_features,))) if use_bias else None
        self.in_features = in_features
        self.out_features = out_features
        self.impl = impl
        self.dtype = compute_dtype(dtype)

    def set_view(self, dtype=None):
        """Used by ``nnx.view(model, dtype=...)``: sets the compute dtype of the copy.

        Args:
          dtype: compute dtype, or None to keep it.
        """
        if dtype is not None:
            self.dtype = compute_dtype(dtype)

    def __call__(self, x_NHWC: jax.Array) -> jax.Array:
        """Applies the convolution.

        Args:
          x_NHWC: (N, H, W, in_features) input.

        Returns:
          (N, H, W, out_features) output in the compute dtype.
        """
        if x_NHWC.ndim != 4 or x_NHWC.shape[-1] != self.in_features:
            raise ValueError(
                f"Conv3x3 expects (N, H, W, {self.in_features}) input, got shape {x_NHWC.shape}"
            )
        _, h, w, c = x_NHWC.shape
        impl = choose_impl(h, w, c) if self.impl == "auto" else self.impl
        kernel = self.kernel[...].astype(self.dtype)
        x_NHWC = x_NHWC.astype(self.dtype)
        if impl == "im2col":
            y = conv3x3_im2col(x_NHWC, kernel)
        else:
            y = conv3x3_xla(x_NHWC, kernel)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype).reshape(1, 1, 1, -1)
        return y
