"""CIFAR-style VGG16 with BatchNorm in Flax NNX (the backbone of BAL's main and pretext tasks).

Usage::

  model = VGG16(10, width=0.25, rngs=nnx.Rngs(0))   # main task, 10 classes
  rot = rotation_net(width=0.25, rngs=nnx.Rngs(1))  # SPEC Step 1 pretext net, 4-way head
  logits_NC = model(x_NHWC)                          # x: float, already normalised
  feats_ND = model.features(x_NHWC)                  # D = 512 * width

Layout (SPEC Step 6): 13 x [conv3x3 + BatchNorm + ReLU] as
64-64-M-128-128-M-256x3-M-512x3-M-512x3-M, then optional dropout and a linear head. Channels
are ``max(1, round(c * width))``. Width 1 with a 10-way head has 14,728,266 parameters (conv
biases kept, as in the authors' PyTorch VGG).

BatchNorm uses PyTorch's defaults (running-average momentum 0.1, i.e. Flax ``momentum=0.9``,
``epsilon=1e-5``). Modules start in training mode, like PyTorch: ``model.eval()`` (or
``nnx.view(model, use_running_average=True, deterministic=True)``) for inference; the functions of
``bal_jax.train`` pick the mode themselves and leave the model's mode untouched.

``dtype='bfloat16'`` runs the convolutions, BatchNorm outputs and activations in bfloat16 with
float32 parameters and BatchNorm statistics; features, the head and the logits stay float32 (see
``bal_jax.precision``). ``nnx.view(model, dtype='bfloat16')`` gives a bf16 copy sharing the
parameters, which is how ``bal_jax.train``'s ``dtype`` option works.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bal_jax.models.conv import Conv3x3, lecun_normal
from bal_jax.precision import compute_dtype

# 'M' is a 2x2 max-pool with stride 2.
VGG16_LAYOUT = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)
NUM_POOLS = 5
# Input height and width must be multiples of this (five 2x2 pools).
INPUT_MULTIPLE = 2**NUM_POOLS
# Feature layers: 'final' is the paper's (SPEC Step 2); 'blockB' is the global-average-pooled
# output of conv stage B (1-based, before its max-pool), e.g. 'block3' = the third 256-wide stage.
FEATURE_LAYERS = ("final", *(f"block{b}" for b in range(1, NUM_POOLS + 1)))


def scaled_channels(channels: int, width: float) -> int:
    """Channel count of a layer at a width multiplier: ``max(1, round(channels * width))``."""
    return max(1, round(channels * width))


def _max_pool_2x2(x_NHWC: jax.Array) -> jax.Array:
    # A reshape + max instead of reduce_window: its gradient is an elementwise select, whereas
    # reduce_window's gradient (select_and_scatter) is slow on XLA:CPU.
    n, h, w, c = x_NHWC.shape
    return x_NHWC.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class ConvBNReLU(nnx.Module):
    """Conv3x3 + BatchNorm + ReLU."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        conv_impl: str,
        dtype="float32",
        rngs: nnx.Rngs,
    ):
        dtype = compute_dtype(dtype)
        self.conv = Conv3x3(in_features, out_features, impl=conv_impl, dtype=dtype, rngs=rngs)
        # Statistics are computed in float32 whatever the dtype (Flax's _compute_stats) and kept
        # in float32 (param_dtype); `dtype` is that of the normalised output.
        self.bn = nnx.BatchNorm(
            out_features,
            momentum=0.9,
            epsilon=1e-5,
            dtype=dtype,
            param_dtype=jnp.float32,
            rngs=rngs,
        )

    def set_view(self, dtype=None):
        # nnx.view visits children first, so self.bn is already the view's copy here.
        if dtype is not None:
            self.bn.dtype = compute_dtype(dtype)

    def __call__(self, x_NHWC: jax.Array, *, mask_N: jax.Array | None = None) -> jax.Array:
        bn_mask = None if mask_N is None else mask_N.reshape(-1, 1, 1, 1)
        return jax.nn.relu(self.bn(self.conv(x_NHWC), mask=bn_mask))


class VGG16(nnx.Module):
    """CIFAR-style VGG16-BN: 13 conv layers, 5 max-pools, a linear head (SPEC Steps 1 and 6)."""

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        width: float = 1.0,
        dropout: float = 0.0,
        conv_impl: str = "auto",
        dtype="float32",
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
          num_classes: size of the linear head (4 for the rotation pretext net).
          in_channels: channels of the input images (3 for RGB, 1 for grey).
          width: channel multiplier; 1.0 is the paper's network, 1/4 and 1/8 make CPU runs
            practical.
          dropout: dropout rate applied to the features before the head only (0 disables it);
            used by the MC-dropout (DBAL) baseline.
          conv_impl: formulation of the 3x3 convolutions, see ``bal_jax.models.conv``.
          dtype: compute dtype of the backbone, ``'float32'`` or ``'bfloat16'`` (parameters are
            float32 either way; see ``bal_jax.precision``).
          rngs: random streams; ``params`` for the weights, ``dropout`` (or the default stream) for
            dropout masks when the model is called without explicit keys.
        """
        if num_classes < 1 or in_channels < 1:
            raise ValueError(
                f"need num_classes >= 1 and in_channels >= 1, got {num_classes}, {in_channels}"
            )
        if not width > 0:
            raise ValueError(f"width must be positive, got {width}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        dtype = compute_dtype(dtype)
        layers = []
        channels = in_channels
        for item in VGG16_LAYOUT:
            if item == "M":
                continue
            out = scaled_channels(item, width)
            layers.append(ConvBNReLU(channels, out, conv_impl=conv_impl, dtype=dtype, rngs=rngs))
            channels = out
        self.layers = nnx.List(layers)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.head = nnx.Linear(channels, num_classes, kernel_init=lecun_normal, rngs=rngs)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.width = width
        self.feature_dim = channels
        self.dtype = dtype

    def set_view(self, dtype=None):
        """Used by ``nnx.view(model, dtype=...)``: records the backbone's compute dtype.

        Args:
          dtype: compute dtype, or None to keep it.
        """
        if dtype is not None:
            self.dtype = compute_dtype(dtype)

    def _check_input(self, x_NHWC: jax.Array) -> None:
        if x_NHWC.ndim != 4 or x_NHWC.shape[-1] != self.in_channels:
            raise ValueError(
                f"VGG16 expects (N, H, W, {self.in_channels}) channels-last input, "
                f"got {x_NHWC.shape}"
            )
        if not jnp.issubdtype(x_NHWC.dtype, jnp.floating):
            raise ValueError(
                f"VGG16 expects normalised float images, got dtype {x_NHWC.dtype}; convert uint8 "
                "images with (x / 255 - mean) / std (bal_jax.train does this inside jit)"
            )
        _, h, w, _ = x_NHWC.shape
        if h % INPUT_MULTIPLE or w % INPUT_MULTIPLE or h == 0 or w == 0:
            raise ValueError(
                f"VGG16 needs height and width that are positive multiples of {INPUT_MULTIPLE} "
                f"(five 2x2 max-pools), got {h}x{w}; pad the images to the next multiple (e.g. "
                "28x28 -> 32x32 with 2 pixels of zeros on each side)"
            )

    def features(self, x_NHWC: jax.Array, *, mask_N: jax.Array | None = None) -> jax.Array:
        """Backbone features before the classifier (SPEC Step 2).

        After the last max-pool the map is (H/32, W/32); for 32x32 inputs that is 1x1 and the
        feature is the flattened map, as in the paper. For larger inputs the map is
        global-average-pooled so the feature stays ``feature_dim = 512 * width`` wide whatever the
        resolution.

        Args:
          x_NHWC: (N, H, W, in_channels) normalised float images, H and W multiples of 32.
          mask_N: optional (N,) bool; when given, BatchNorm batch statistics (training mode) use
            only the rows where it is True (padded batches).

        Returns:
          (N, feature_dim) float32 features.
        """
        self._check_input(x_NHWC)
        x = x_NHWC
        layer_iter = iter(self.layers)
        for item in VGG16_LAYOUT:
            if item == "M":
                x = _max_pool_2x2(x)
            else:
                x = next(layer_iter)(x, mask_N=mask_N)
        return x.astype(jnp.float32).mean(axis=(1, 2))

    def layer_features(
        self, x_NHWC: jax.Array, *, layer: str = "final", mask_N: jax.Array | None = None
    ) -> jax.Array:
        """Features of a chosen layer: 'final' (``features``) or a pooled intermediate block.

        Intermediate blocks of a self-supervised network can hold more class information than
        its last layer (issue 11: for the rotation net, block 3/4 beat the final features).

        Args:
          x_NHWC: (N, H, W, in_channels) normalised float images, H and W multiples of 32.
          layer: one of ``FEATURE_LAYERS``; 'blockB' is the output of conv stage B (after its
            last ReLU, before its max-pool), global-average-pooled.
          mask_N: optional (N,) bool mask of real rows for BatchNorm statistics.

        Returns:
          (N, channels of that layer) features.
        """
        if layer not in FEATURE_LAYERS:
            raise ValueError(f"unknown feature layer {layer!r}; choose one of {FEATURE_LAYERS}")
        if layer == "final":
            return self.features(x_NHWC, mask_N=mask_N)
        self._check_input(x_NHWC)
        stop = int(layer.removeprefix("block"))
        x = x_NHWC
        layer_iter = iter(self.layers)
        stage = 1
        for item in VGG16_LAYOUT:
            if item == "M":
                if stage == stop:
                    break
                x = _max_pool_2x2(x)
                stage += 1
            else:
                x = next(layer_iter)(x, mask_N=mask_N)
        return x.mean(axis=(1, 2))

    def classify(
        self,
        feats_ND: jax.Array,
        *,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | jax.Array | None = None,
    ) -> jax.Array:
        """Dropout (if the model has it) and the linear head.

        Args:
          feats_ND: (N, feature_dim) output of ``features``.
          deterministic: overrides the dropout mode (``False`` turns dropout on, e.g. for MC-dropout
            sampling with BatchNorm in eval mode); ``None`` follows the module's train/eval mode.
          rngs: key (or Rngs) for the dropout mask; defaults to the model's own stream.

        Returns:
          (N, num_classes) logits.
        """
        # The head runs in float32 whatever the backbone's dtype (see bal_jax.precision).
        feats_ND = feats_ND.astype(jnp.float32)
        return self.head(self.dropout(feats_ND, deterministic=deterministic, rngs=rngs))

    def __call__(
        self,
        x_NHWC: jax.Array,
        *,
        mask_N: jax.Array | None = None,
        rngs: nnx.Rngs | jax.Array | None = None,
    ) -> jax.Array:
        """Logits of a batch.

        Args:
          x_NHWC: (N, H, W, in_channels) normalised float images, H and W multiples of 32.
          mask_N: optional (N,) bool mask of real rows for BatchNorm statistics (see ``features``).
          rngs: key (or Rngs) for the dropout mask; defaults to the model's own stream.

        Returns:
          (N, num_classes) logits.
        """
        return self.classify(self.features(x_NHWC, mask_N=mask_N), rngs=rngs)


def rotation_net(
    *,
    in_channels: int = 3,
    width: float = 1.0,
    conv_impl: str = "auto",
    dtype="float32",
    rngs: nnx.Rngs,
) -> VGG16:
    """The rotation pretext network of SPEC Step 1: the VGG16 backbone with a 4-way head.

    Args:
      in_channels: channels of the input images.
      width: channel multiplier.
      conv_impl: formulation of the 3x3 convolutions.
      dtype: compute dtype of the backbone.
      rngs: random streams.

    Returns:
      A fresh ``VGG16(4, ...)`` (no modules shared with any other network).
    """
    return VGG16(
        4, in_channels=in_channels, width=width, conv_impl=conv_impl, dtype=dtype, rngs=rngs
    )


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters (``nnx.Param`` leaves) of a model or an abstract model."""
    return sum(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
