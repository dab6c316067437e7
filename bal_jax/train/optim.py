"""Optimizers and learning-rate schedules with traced hyperparameters (one compile per run).

Usage::

  tx = make_optimizer(learning_rate=0.1, boundaries=(300, 600), weight_decay=5e-4)  # paper
  tx = make_optimizer(learning_rate=0.05, schedule="cosine", total_steps=1200,
                      warmup_steps=60, nesterov=True)                              # small data

Every numeric argument may be a traced array, so a new data set size (which moves the
boundaries and the step count) or a new learning rate does not recompile the training step.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

# Milestone lists are padded to this length (with a step never reached), so their number does not
# change the compiled training step.
MAX_MILESTONES = 8
SCHEDULES = ("multistep", "cosine")


def multistep_schedule(
    learning_rate: float | jax.Array,
    boundaries: Sequence[int] | jax.Array,
    lr_decay: float | jax.Array,
) -> optax.Schedule:
    """Multistep learning rate: ``learning_rate * lr_decay ** #{b in boundaries : b <= step}``.

    The values of ``optax.piecewise_constant_schedule(learning_rate, {b: lr_decay ...})`` (PyTorch's
    ``MultiStepLR``), written so that the boundaries and factors may be traced arrays.

    Args:
      learning_rate: initial rate.
      boundaries: optimizer steps at which the rate is multiplied by ``lr_decay``.
      lr_decay: the factor.

    Returns:
      An optax schedule ``step -> rate``.
    """
    boundaries = jnp.asarray(boundaries, jnp.int32).reshape(-1)

    def schedule(count):
        return learning_rate * lr_decay ** jnp.sum(count >= boundaries)

    return schedule


def warmup_cosine_schedule(
    learning_rate: float | jax.Array,
    total_steps: int | jax.Array,
    warmup_steps: int | jax.Array,
) -> optax.Schedule:
    """Linear warm-up from 0 to ``learning_rate``, then a cosine decay to 0 at ``total_steps``.

    The values of ``optax.warmup_cosine_decay_schedule(0, lr, warmup, total, end_value=0)``
    with traced step counts. Step ``t`` (0-based) of the warm-up runs at
    ``lr * (t + 1) / (warmup + 1)``, so the first step already moves.

    Args:
      learning_rate: peak rate.
      total_steps: steps of the whole run (the rate reaches 0 there).
      warmup_steps: steps of the linear warm-up (0 = none).

    Returns:
      An optax schedule ``step -> rate``.
    """
    total = jnp.maximum(jnp.asarray(total_steps, jnp.float32), 1.0)
    warm = jnp.asarray(warmup_steps, jnp.float32)

    def schedule(count):
        t = jnp.asarray(count, jnp.float32)
        ramp = (t + 1.0) / (warm + 1.0)
        progress = jnp.clip((t - warm) / jnp.maximum(total - warm, 1.0), 0.0, 1.0)
        cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return learning_rate * jnp.where(t < warm, ramp, cosine)

    return schedule


def make_schedule(
    *,
    learning_rate: float | jax.Array,
    schedule: str = "multistep",
    boundaries: Sequence[int] | jax.Array = (),
    lr_decay: float | jax.Array = 0.1,
    total_steps: int | jax.Array = 1,
    warmup_steps: int | jax.Array = 0,
) -> optax.Schedule:
    """The learning-rate schedule named by ``schedule`` ('multistep' or 'cosine')."""
    if schedule == "multistep":
        return multistep_schedule(learning_rate, boundaries, lr_decay)
    if schedule == "cosine":
        return warmup_cosine_schedule(learning_rate, total_steps, warmup_steps)
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")


def make_optimizer(
    *,
    learning_rate: float | jax.Array,
    boundaries: Sequence[int] | jax.Array = (),
    lr_decay: float | jax.Array = 0.1,
    momentum: float | jax.Array = 0.9,
    weight_decay: float | jax.Array = 5e-4,
    schedule: str = "multistep",
    total_steps: int | jax.Array = 1,
    warmup_steps: int | jax.Array = 0,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    """SGD with momentum and coupled L2 weight decay (PyTorch semantics) under a schedule.

    ``update = -lr_t * trace``, ``trace = momentum * trace + grad + weight_decay * param``
    (PyTorch's ``SGD(momentum, weight_decay, nesterov)``). ``schedule='multistep'`` is the
    paper's ``MultiStepLR`` (Table I); ``'cosine'`` is a linear warm-up then a cosine decay to 0
    over ``total_steps`` (the small-data recipe).

    Args:
      learning_rate: initial (multistep) or peak (cosine) learning rate.
      boundaries: multistep: optimizer steps at which the rate is multiplied by ``lr_decay``.
      lr_decay: multistep decay factor.
      momentum: heavy-ball momentum.
      weight_decay: L2 coefficient.
      schedule: 'multistep' or 'cosine' (static: it selects the code).
      total_steps: cosine: steps of the whole run.
      warmup_steps: cosine: steps of linear warm-up.
      nesterov: Nesterov momentum (static).

    Returns:
      An optax transformation.
    """
    lr = make_schedule(
        learning_rate=learning_rate,
        schedule=schedule,
        boundaries=boundaries,
        lr_decay=lr_decay,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
    )
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.sgd(lr, momentum=momentum, nesterov=nesterov),
    )
