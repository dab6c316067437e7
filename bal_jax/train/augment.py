"""On-device image augmentation and normalisation, applied inside the jitted steps.

Usage::

  x = normalize(images_u8, mean=MEAN, std=STD)            # (x / 255 - mean) / std, float32
  x_u8 = random_crop_flip(key, images_u8)                  # crop (pad 4) + horizontal flip
  views_u8, labels = rotations(images_u8)                  # the rotation pretext's 4 views
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Random crop padding for 32x32 data (SPEC Step 1 and the authors' CIFAR transforms).
CROP_PADDING = 4
NUM_ROTATIONS = 4


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


def random_crop_flip(
    key: jax.Array, images_NHWC: jax.Array, *, padding: int = CROP_PADDING, flip: bool = True
):
    """Random crop after zero padding, then a random horizontal flip, per image.

    Equivalent to torchvision's ``RandomCrop(H, padding=padding)`` + ``RandomHorizontalFlip()``
    applied to uint8 images (the padding is pixel value 0, before normalisation).

    Args:
      key: PRNG key.
      images_NHWC: images of any dtype.
      padding: pixels of zero padding on each side before cropping.
      flip: also flip horizontally (False: crop only, for digits and other chiral images).

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
    if not flip:
        return crops
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
