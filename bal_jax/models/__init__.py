"""Networks of bal_jax: the CIFAR-style VGG16-BN backbone and its 3x3 convolution."""

from bal_jax.models.conv import Conv3x3, choose_impl, conv3x3_im2col, conv3x3_xla
from bal_jax.models.vgg import VGG16, count_params, rotation_net, scaled_channels

__all__ = [
    "VGG16",
    "Conv3x3",
    "choose_impl",
    "conv3x3_im2col",
    "conv3x3_xla",
    "count_params",
    "rotation_net",
    "scaled_channels",
]
