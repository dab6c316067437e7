"""PyTorch reference of the authors' CIFAR VGG16-BN, its training step and its pool inference.

The layout is the one the released BAL code inherits from PT4AL / kuangliu's pytorch-cifar
``models/vgg.py``: 13 x (conv3x3 pad 1 with bias + BatchNorm2d + ReLU), MaxPool2d(2) after each
block, the no-op ``AvgPool2d(1, 1)`` they append, flatten, one ``Linear`` head. Training is
``SGD(lr, momentum=0.9, weight_decay=5e-4)`` on ``CrossEntropyLoss``. ``width`` scales every conv's
channels the way ``bal_jax.models.VGG16`` does, so both sides have the same parameters.

The authors augment on the host per image (torchvision ``RandomCrop(32, padding=4)``,
``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``) inside a DataLoader. Here the same
augmentation runs batched in torch inside the timed step, as bal_jax does inside its jitted step,
so both sides pay for it.

Usage::

  model = VGG16(10, width=0.25)
  step = make_train_step(model, learning_rate=0.1, mean=MEAN, std=STD, channels_last=True)
  loss = step(images_u8_NHWC, labels_N)   # torch tensors
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

CFG_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def scaled_channels(channels: int, width: float) -> int:
    """Channels of a width-scaled layer; must match ``bal_jax.models`` (the worker checks)."""
    return max(1, round(channels * width))


class VGG(nn.Module):
    """The authors' CIFAR VGG (``cfg`` of ints and 'M'), optionally width-scaled."""

    def __init__(
        self,
        num_classes: int,
        *,
        cfg: Sequence[int | str] = CFG_VGG16,
        in_channels: int = 3,
        width: float = 1.0,
        channels_fn: Callable[[int, float], int] = scaled_channels,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                c_out = channels_fn(int(v), width)
                layers += [
                    nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                ]
                c_in = c_out
        # The authors' no-op pooling, kept so the reference runs the same graph they run.
        layers.append(nn.AvgPool2d(kernel_size=1, stride=1))
        self.features = nn.Sequential(*layers)
        self.feature_dim = c_in
        self.classifier = nn.Linear(c_in, num_classes)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (logits, features) for NCHW float input; features = flattened last pool."""
        feats = self.features(x).flatten(1)
        return self.classifier(feats), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


def VGG16(num_classes: int, *, in_channels: int = 3, width: float = 1.0, **kw) -> VGG:
    """The CIFAR VGG16-BN of the authors' code (``CFG_VGG16``)."""
    return VGG(num_classes, in_channels=in_channels, width=width, **kw)


def _normalize(
    x_u8_NHWC: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool
) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW (ToTensor + Normalize) in the given memory format."""
    x = x_u8_NHWC.permute(0, 3, 1, 2).float().div_(255.0)
    x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=fmt)


def augment_u8(
    x_u8_NHWC: torch.Tensor, *, pad: int = 4, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Batched RandomCrop(size, padding=pad) with zero (black) padding + RandomHorizontalFlip.

    Each image gets its own crop offset and flip, as torchvision draws them per image.
    """
    b, h, w, _ = x_u8_NHWC.shape
    padded = torch.nn.functional.pad(x_u8_NHWC, (0, 0, pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator)
    flip = torch.rand((b, 1), generator=generator) < 0.5
    cols = torch.arange(w).view(1, w)
    cols = torch.where(flip, w - 1 - cols, cols) + dx
    rows = torch.arange(h).view(1, h) + dy
    batch = torch.arange(b).view(b, 1, 1)
    return padded[batch, rows.view(b, h, 1), cols.view(b, 1, w)]


def make_train_step(
    model: VGG,
    *,
    learning_rate: float,
    mean: Sequence[float],
    std: Sequence[float],
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    augment: bool = True,
    channels_last: bool = False,
    seed: int = 0,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One SGD step of the authors' loop (zero_grad, forward, CE loss, backward, step).

    Returns:
      ``step(images_u8_NHWC, labels_N) -> loss`` (a 0-d tensor; CPU torch is synchronous).
    """
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.SGD(
        model.parameters(), lr=learning_rate, momentum=momentum, weight_decay=weight_decay
    )
    criterion = nn.CrossEntropyLoss()
    mean_t = torch.tensor(mean, dtype=torch.float32)
    std_t = torch.tensor(std, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)

    def step(images_u8_NHWC: torch.Tensor, labels_N: torch.Tensor) -> torch.Tensor:
        x = augment_u8(images_u8_NHWC, generator=gen) if augment else images_u8_NHWC
        x = _normalize(x, mean_t, std_t, channels_last)
        opt.zero_grad(set_to_none=True)
        loss = criterion(model(x), labels_N)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def predict(
    model: VGG,
    images_u8_NHWC: np.ndarray,
    *,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    channels_last: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and features of a whole pool, batch by batch, in eval mode.

    Returns:
      ``(probs_NC, feats_ND)`` as float32 NumPy arrays.
    """
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.eval()
    mean_t = torch.tensor(mean, dtype=torch.float32)
    std_t = torch.tensor(std, dtype=torch.float32)
    n = images_u8_NHWC.shape[0]
    probs = np.empty((n, model.classifier.out_features), np.float32)
    feats = np.empty((n, model.feature_dim), np.float32)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            x = torch.from_numpy(images_u8_NHWC[start : start + batch_size])
            logits, f = model.forward_features(_normalize(x, mean_t, std_t, channels_last))
            probs[start : start + len(x)] = torch.softmax(logits, dim=1).numpy()
            feats[start : start + len(x)] = f.numpy()
    return probs, feats
