"""Compute precision: float32 everywhere, or bfloat16 mixed precision for GPUs and TPUs.

Usage::

  dtype = compute_dtype("bfloat16")                  # jnp.dtype, or ValueError naming the choices
  model = VGG16(10, width=1.0, dtype="bfloat16", rngs=nnx.Rngs(0))
  fit(key, model, x_u8, y, ..., dtype="bfloat16")     # or set it per call on a float32 model

Mixed precision here means: convolutions, BatchNorm outputs and activations in the compute dtype;
parameters, optimizer state, BatchNorm statistics (computed in float32 from the bf16 activations,
as Flax does), the linear head, the logits and the loss in float32. The head stays float32
because the active-learning rankings (least confidence, entropy, CDD on features) would tie
often in bfloat16's 8-bit mantissa; it is 0.003% of the network's FLOPs.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

DTYPES = ("float32", "bfloat16")


def compute_dtype(dtype) -> np.dtype:
    """The compute dtype for a name (or dtype) in ``DTYPES``.

    Args:
      dtype: ``'float32'``, ``'bfloat16'``, or the matching NumPy/JAX dtype.

    Returns:
      The ``np.dtype``.

    Raises:
      ValueError: any other value.
    """
    try:
        resolved = jnp.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved.name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return resolved
