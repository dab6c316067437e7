"""Settings of a training stage, shared by the runner, the labeling tool and the library.

    settings = TrainSettings(epochs=20, batch_size=64, learning_rate=0.05, milestones=(15,))
    train.fit(key, net, images, labels, **fit_kwargs(settings, mean, std, mesh),
              recipe=settings.recipe)

`TrainSettings` is the one definition of a stage's optimisation settings: the runner's config
holds its two stages as TrainSettings (`experiments.config.Config.train` / `.pretext_train`,
whose flags `experiments.config.TRAIN_FLAGS` maps onto the fields), the labeling project's
config (bal_jax.labeling.config) nests them the same way (`pretext` / `main`), and
`fit_kwargs` turns one into `bal_jax.train.fit`'s arguments.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from bal_jax import train

__all__ = [
    "AUGMENTATIONS",
    "ModelSpec",
    "Split",
    "TrainSettings",
    "augment_kwargs",
    "fit_kwargs",
]

# Augmentation modes (SPEC Step 1; per dataset in experiments/config.py): random crop (pad 4)
# with a horizontal flip, the crop alone (digits must not be mirrored), or none.
AUGMENTATIONS = ("crop_flip", "crop", "none")


class Split(NamedTuple):
    """Images (N, H, W, C) uint8 with labels (N,) int."""

    images: np.ndarray
    labels: np.ndarray


class ModelSpec(NamedTuple):
    num_classes: int
    in_channels: int
    width: float


class TrainSettings(NamedTuple):
    """Optimisation settings of one training stage (SPEC Step 1 / Step 6, paper Table I)."""

    epochs: int
    batch_size: int
    learning_rate: float
    milestones: tuple[int, ...] = ()
    lr_decay: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: str = "crop_flip"  # one of AUGMENTATIONS
    eval_batch_size: int = 512
    recipe: train.Recipe = train.RECIPES["paper"]
    # Compute dtype ('float32' or 'bfloat16' mixed precision, bal_jax.precision) and optimizer
    # steps per jitted call (>1 only on accelerators; see bal_jax.train.fit).
    dtype: str = "float32"
    steps_per_dispatch: int = 1


def augment_kwargs(mode: str) -> dict[str, Any]:
    """The arguments of `train.fit` / `train.fit_rotation` for an augmentation mode.

    Args:
      mode: one of `AUGMENTATIONS`.

    Returns:
      ``{"augment": bool}``, plus ``{"flip": False}`` for "crop".
    """
    if mode not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {mode!r}")
    if mode == "crop":
        return {"augment": True, "flip": False}
    return {"augment": mode != "none"}


def fit_kwargs(settings: TrainSettings, mean, std, mesh) -> dict[str, Any]:
    """`train.fit` / `train.fit_rotation` keyword arguments of one training stage."""
    return dict(
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        milestones=tuple(settings.milestones),
        lr_decay=settings.lr_decay,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        mean=mean,
        std=std,
        mesh=mesh,
        **augment_kwargs(settings.augment),
        dtype=settings.dtype,
        steps_per_dispatch=settings.steps_per_dispatch,
    )
