"""Main-task training recipes: the paper's (Table I) and one measured for small labeled sets.

Usage::

  recipe = RECIPES["small_data"]          # recipe_name(recipe) == "small_data"
  fit(key, model, x_u8, y, epochs=20, batch_size=64, learning_rate=0.05, recipe=recipe, ...)
  acc = evaluate(model, test_u8, test_y, tta_flip=recipe.tta_flip, ...)

A recipe holds the levers beyond epochs / batch size / learning rate / milestones (fields of
a stage's `bal_jax.settings.TrainSettings`, which holds the recipe too): the schedule's shape,
a floor on optimizer steps, warm-up, label smoothing, an exponential moving average (EMA) of
the weights for evaluation and test-time flip averaging.
The numbers of ``small_data`` were chosen by measurement (`python -m experiments.noise`,
experiments/reports/noise.md): see that report for what each lever bought.
"""

from __future__ import annotations

from typing import NamedTuple

from bal_jax.train.optim import SCHEDULES


class Recipe(NamedTuple):
    """How the main task is optimised; the defaults are the paper's recipe (SPEC Step 6).

    schedule: 'multistep' (paper Table I: the rate drops 10x at the milestone epochs) or
      'cosine' (linear warm-up, then cosine decay to 0 over the whole run; milestones unused).
    min_steps: train for at least this many optimizer steps, adding whole epochs: tiny labeled
      sets get enough steps, large ones are not slowed (0 = exactly ``epochs``).
    warmup_fraction: share of the run's steps spent in the linear warm-up (cosine only).
    label_smoothing: weight of the uniform distribution mixed into the one-hot targets.
    ema_decay: 0 = off; otherwise the model ends with the exponential moving average of its
      weights and of its BatchNorm running statistics.
    ema_debias: how the average starts. False: TensorFlow's ``ExponentialMovingAverage``
      warm-up, decay ``min(ema_decay, (1 + t) / (10 + t))`` at step ``t``; that ramp reaches
      0.99 only after 890 steps, so in shorter runs every ``ema_decay`` above it averages the
      same (about the last t/9 steps). True: the bias-corrected average (Adam's correction),
      decay ``ema_decay * (1 - ema_decay**t) / (1 - ema_decay**(t + 1))``: exactly the
      ``ema_decay**age``-weighted mean of the weights after every step so far, so the decay
      sets the window (about ``1 / (1 - ema_decay)`` steps) from the first step on.
    tta_flip: inference averages the logits of each image and its horizontal mirror.
    nesterov: Nesterov momentum.
    """

    schedule: str = "multistep"
    min_steps: int = 0
    warmup_fraction: float = 0.0
    label_smoothing: float = 0.0
    ema_decay: float = 0.0
    tta_flip: bool = False
    nesterov: bool = False
    ema_debias: bool = False

    def __repr__(self) -> str:
        # Fields added after models were stored are left out at their defaults: model digests
        # hash this repr, so the models of earlier runs stay valid.
        shown = [
            f"{k}={v!r}"
            for k, v in self._asdict().items()
            if k not in LATER_FIELDS or v != LATER_FIELDS[k]
        ]
        return f"Recipe({', '.join(shown)})"


# Recipe fields added later, with the defaults that `Recipe.__repr__` leaves out.
LATER_FIELDS = {"ema_debias": False}


def check_recipe(recipe: Recipe) -> Recipe:
    """Validates a recipe; returns it. Raises ValueError naming the bad field."""
    if not isinstance(recipe, Recipe):
        raise ValueError(f"recipe must be a bal_jax.train.Recipe, got {type(recipe).__name__}")
    if recipe.schedule not in SCHEDULES:
        raise ValueError(f"recipe.schedule must be one of {SCHEDULES}, got {recipe.schedule!r}")
    if not (isinstance(recipe.min_steps, int) and recipe.min_steps >= 0):
        raise ValueError(f"recipe.min_steps must be an integer >= 0, got {recipe.min_steps!r}")
    if not 0.0 <= recipe.warmup_fraction < 1.0:
        raise ValueError(f"recipe.warmup_fraction must be in [0, 1), got {recipe.warmup_fraction}")
    if not 0.0 <= recipe.label_smoothing < 1.0:
        raise ValueError(f"recipe.label_smoothing must be in [0, 1), got {recipe.label_smoothing}")
    if not 0.0 <= recipe.ema_decay < 1.0:
        raise ValueError(f"recipe.ema_decay must be in [0, 1), got {recipe.ema_decay}")
    if not isinstance(recipe.ema_debias, bool):
        raise ValueError(f"recipe.ema_debias must be True or False, got {recipe.ema_debias!r}")
    return recipe


PAPER = Recipe()
SMALL_DATA = Recipe(
    schedule="cosine",
    min_steps=640,
    warmup_fraction=0.05,
    label_smoothing=0.1,
    ema_decay=0.99,
    tta_flip=True,
    nesterov=True,
)
RECIPES: dict[str, Recipe] = {"paper": PAPER, "small_data": SMALL_DATA}


def recipe_name(recipe: Recipe) -> str | None:
    """The name `recipe` has in `RECIPES` (reports and workdir fingerprints show the name),
    or None for a recipe that is none of them."""
    return next((name for name, r in RECIPES.items() if r == recipe), None)
