"""SimCLR-style strong augmentation of uint8 batches, inside jit (the contrastive pretext's views).

Usage::

  x_2BHWC = two_views(key, images_BHWC_u8)                 # float32 in [0, 1], 2B views
  x_2BHWC = two_views(key, images_BHWC_u8, params=ViewParams(crop_scale=(0.08, 1.0)))

Each view is, per image: a random resized crop (area fraction ``crop_scale``, aspect ratio in
[3/4, 4/3], bilinear resampling back to H x W), a horizontal flip with probability 1/2, colour
jitter with probability ``jitter_prob`` (brightness, contrast, saturation, hue, in that fixed
order; torchvision shuffles the order) and greyscale with probability ``grey_prob`` (Chen et al.
2020, the CIFAR-10 settings: jitter strength 0.5, no blur). Everything is vectorised: the crop
is two small interpolation matrices per image, so a batch costs two einsums.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

# ITU-R 601 luma weights (torchvision's rgb_to_grayscale).
_LUMA = (0.299, 0.587, 0.114)
# RGB <-> YIQ: hue is a rotation of the (I, Q) chroma plane.
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


class ViewParams(NamedTuple):
    """Strength of the contrastive views (static: hashable floats).

    crop_scale: range of the crop's area as a fraction of the image.
    crop_ratio: range of the crop's aspect ratio (width / height).
    brightness, contrast, saturation: jitter factors drawn from [1 - s, 1 + s].
    hue: hue shift drawn from [-hue, hue] turns.
    jitter_prob: probability of applying the colour jitter.
    grey_prob: probability of converting to greyscale.
    """

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_prob: float = 0.8
    grey_prob: float = 0.2


DEFAULT_VIEWS = ViewParams()


def _interp_matrix(start_N, length_N, size: int) -> jax.Array:
    """(N, size, size) bilinear weights: output pixel i samples start + (i + 0.5) * len/size."""
    pos_NS = start_N[:, None] + (jnp.arange(size) + 0.5)[None, :] * (length_N[:, None] / size) - 0.5
    pos_NS = jnp.clip(pos_NS, 0.0, size - 1.0)
    lo = jnp.floor(pos_NS)
    frac = pos_NS - lo
    lo = lo.astype(jnp.int32)
    hi = jnp.minimum(lo + 1, size - 1)
    return (1.0 - frac)[..., None] * jax.nn.one_hot(lo, size) + frac[..., None] * jax.nn.one_hot(
        hi, size
    )


def random_resized_crop(
    key: jax.Array, images_NHWC: jax.Array, *, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)
) -> jax.Array:
    """torchvision's ``RandomResizedCrop(H)`` on a batch, as float32 (values kept in input units).

    The crop's area fraction is uniform in ``scale`` and its log aspect ratio uniform in
    ``log(ratio)``; sides are clipped to the image (torchvision retries, then falls back to the
    centre crop) and the offset is uniform. Bilinear resampling, without antialiasing.

    Args:
      key: PRNG key.
      images_NHWC: (N, H, W, C) images, any numeric dtype.
      scale: (low, high) area fraction.
      ratio: (low, high) aspect ratio, width / height.

    Returns:
      (N, H, W, C) float32 crops.
    """
    n, h, w, _ = images_NHWC.shape
    k_area, k_ratio, k_y, k_x = jax.random.split(key, 4)
    area = jax.random.uniform(k_area, (n,), minval=scale[0], maxval=scale[1]) * h * w
    log_r = jax.random.uniform(k_ratio, (n,), minval=math.log(ratio[0]), maxval=math.log(ratio[1]))
    r = jnp.exp(log_r)
    cw = jnp.clip(jnp.sqrt(area * r), 1.0, w)
    ch = jnp.clip(jnp.sqrt(area / r), 1.0, h)
    y0 = jax.random.uniform(k_y, (n,)) * (h - ch)
    x0 = jax.random.uniform(k_x, (n,)) * (w - cw)
    ry_NHH = _interp_matrix(y0, ch, h)
    rx_NWW = _interp_matrix(x0, cw, w)
    x = images_NHWC.astype(jnp.float32)
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("nih,nhwc->niwc", ry_NHH, x, precision=hi)
    return jnp.einsum("njw,niwc->nijc", rx_NWW, x, precision=hi)


def _grey(x_NHWC):
    return jnp.einsum("nhwc,c->nhw", x_NHWC, jnp.asarray(_LUMA))[..., None]


def color_jitter(key: jax.Array, x_NHWC: jax.Array, *, params: ViewParams = DEFAULT_VIEWS):
    """Colour jitter then random greyscale, per image, on float images in [0, 1].

    Brightness scales the image; contrast blends it with its mean grey level; saturation blends
    it with its greyscale; hue rotates the chroma plane of YIQ (an approximation of
    torchvision's HSV hue shift that needs no branches). Each is clipped to [0, 1]. One-channel
    images get brightness and contrast only.

    Args:
      key: PRNG key.
      x_NHWC: float images in [0, 1].
      params: strengths and probabilities.

    Returns:
      Jittered images, same shape, in [0, 1].
    """
    n, _, _, c = x_NHWC.shape
    ks = jax.random.split(key, 6)

    def factor(k, s):
        return jax.random.uniform(k, (n, 1, 1, 1), minval=1.0 - s, maxval=1.0 + s)

    apply = jax.random.bernoulli(ks[0], params.jitter_prob, (n, 1, 1, 1))
    y = jnp.clip(x_NHWC * factor(ks[1], params.brightness), 0.0, 1.0)
    grey_level = (_grey(y) if c == 3 else y).mean(axis=(1, 2, 3), keepdims=True)
    y = jnp.clip(grey_level + (y - grey_level) * factor(ks[2], params.contrast), 0.0, 1.0)
    if c == 3:
        g = _grey(y)
        y = jnp.clip(g + (y - g) * factor(ks[3], params.saturation), 0.0, 1.0)
        m = jnp.asarray(_RGB_TO_YIQ)
        yiq = jnp.einsum("nhwc,dc->nhwd", y, m)
        theta = (
            2.0
            * jnp.pi
            * jax.random.uniform(ks[4], (n, 1, 1), minval=-params.hue, maxval=params.hue)
        )
        i_, q_ = yiq[..., 1], yiq[..., 2]
        cos, sin = jnp.cos(theta), jnp.sin(theta)
        yiq = jnp.stack([yiq[..., 0], cos * i_ - sin * q_, sin * i_ + cos * q_], axis=-1)
        y = jnp.clip(jnp.einsum("nhwd,cd->nhwc", yiq, jnp.linalg.inv(m)), 0.0, 1.0)
    y = jnp.where(apply, y, x_NHWC)
    if c == 3:
        to_grey = jax.random.bernoulli(ks[5], params.grey_prob, (n, 1, 1, 1))
        y = jnp.where(to_grey, jnp.broadcast_to(_grey(y), y.shape), y)
    return y


def strong_view(key: jax.Array, images_NHWC_u8: jax.Array, *, params: ViewParams = DEFAULT_VIEWS):
    """One SimCLR view of each image: resized crop, flip, colour jitter, grey.

    Args:
      key: PRNG key.
      images_NHWC_u8: (N, H, W, C) uint8 images.
      params: augmentation strengths.

    Returns:
      (N, H, W, C) float32 images in [0, 1] (normalise them before the network).
    """
    n = images_NHWC_u8.shape[0]
    k_crop, k_flip, k_color = jax.random.split(key, 3)
    x = random_resized_crop(
        k_crop, images_NHWC_u8, scale=params.crop_scale, ratio=params.crop_ratio
    )
    x = x / 255.0
    flip = jax.random.bernoulli(k_flip, 0.5, (n, 1, 1, 1))
    x = jnp.where(flip, x[:, :, ::-1, :], x)
    return color_jitter(k_color, x, params=params)


def two_views(key: jax.Array, images_BHWC_u8: jax.Array, *, params: ViewParams = DEFAULT_VIEWS):
    """Two independent strong views of a batch, stacked: rows i and B + i are a positive pair.

    Args:
      key: PRNG key.
      images_BHWC_u8: (B, H, W, C) uint8 images.
      params: augmentation strengths.

    Returns:
      (2B, H, W, C) float32 images in [0, 1].
    """
    k1, k2 = jax.random.split(key)
    return jnp.concatenate(
        [
            strong_view(k1, images_BHWC_u8, params=params),
            strong_view(k2, images_BHWC_u8, params=params),
        ]
    )
