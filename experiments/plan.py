"""Everything a run decides before any training, checked with one clear sentence each.

    check_config(cfg)                                   # flags alone, before loading data
    plan = make_plan(cfg, pool_size=45_000, val_size=5_000, num_classes=10)
    plan.counts, plan.search_cycles, plan.beta_grid     # what the run will do

A setting that cannot run to its end (a beta grid with no candidate above the minimum, more
clusters than images, a budget larger than the pool, ...) raises `ConfigError` here, not
after hours of pretext training, beta search and cycles.
"""

from __future__ import annotations

from typing import NamedTuple

from bal_jax.budgets import BUDGETS, cycle_counts, search_cycles, validate_fractions
from bal_jax.features import FEATURE_VIEWS, PRETEXTS
from bal_jax.learners import CLASSIFIERS
from bal_jax.methods import (
    BAL_SAMPLERS,
    INDICATORS,
    METHODS,
    NEEDS_BETA,
    NEEDS_MC_DROPOUT,
    BALOptions,
    bal_min_beta,
)
from bal_jax.models.vgg import FEATURE_LAYERS
from bal_jax.precision import DTYPES
from bal_jax.settings import AUGMENTATIONS
from bal_jax.train.recipe import check_recipe
from experiments.config import STAGES, TRAIN_FLAGS, Config, ConfigError, flag_value

__all__ = ["FRACTIONS_OF", "ConfigError", "Plan", "check_config", "make_plan", "searches_beta"]

# What budget fractions are fractions of (docs/fidelity.md, SPEC "Budget regimes").
FRACTIONS_OF = ("pool", "train")


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def searches_beta(c: Config) -> bool:
    """Whether a run of `c` searches beta on the validation split (Eq. 9): a method draws from
    BAL's adaptive sub-pools and no --beta is given."""
    return bool(NEEDS_BETA & set(c.methods)) and c.subpools == "adaptive" and c.beta is None


def check_config(c: Config) -> None:
    """Every check that needs no data; raises ConfigError with one sentence."""
    need = _need
    need(len(c.methods) > 0, "--method needs at least one method")
    for m in c.methods:
        need(m in METHODS, f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    need(len(set(c.methods)) == len(c.methods), f"--method lists a method twice: {c.methods}")
    need(
        len(c.seeds) > 0 and len(set(c.seeds)) == len(c.seeds),
        f"--seeds must be distinct: {c.seeds}",
    )
    need(c.budget in BUDGETS, f"unknown budget {c.budget!r}; choose one of {sorted(BUDGETS)}")
    if c.fractions:
        try:
            validate_fractions(c.fractions)
        except ValueError as e:
            raise ConfigError(f"--fractions: {e}") from None
    need(c.width > 0, f"--width must be positive, got {c.width}")
    for name, (stages, field) in TRAIN_FLAGS.items():
        values = [getattr(getattr(c, stage), field) for stage in stages]
        need(
            all(v == values[0] for v in values),
            f"--{name} sets both training stages, but their {field} differ: {values}",
        )
    for name in ("pretext_epochs", "epochs", "batch_size", "pretext_batch_size", "eval_batch_size"):
        value = flag_value(c, name)
        need(value >= 1, f"--{name} must be at least 1, got {value}")
    need(
        c.train.learning_rate > 0 and c.pretext_train.learning_rate > 0,
        "learning rates must be positive",
    )
    for name in ("milestones", "pretext_milestones"):
        ms = flag_value(c, name)
        need(
            list(ms) == sorted(set(ms)) and all(m > 0 for m in ms),
            f"--{name}={','.join(map(str, ms))} must be strictly increasing positive epochs",
        )
    for stage in STAGES:
        try:
            check_recipe(getattr(c, stage).recipe)
        except ValueError as e:
            raise ConfigError(f"{stage}.{e}") from None
    need(
        not (c.train.recipe.tta_flip and c.train.augment != "crop_flip"),
        f"--recipe={flag_value(c, 'recipe')} averages each test image with its mirror, which "
        f"--augment={c.train.augment} does not train for; use --augment=crop_flip or "
        "--recipe=paper",
    )
    need(
        c.pretext_seed is None or c.pretext_seed >= 0,
        f"--pretext_seed must be >= 0, got {c.pretext_seed}",
    )
    dtype, steps = c.train.dtype, c.train.steps_per_dispatch
    need(dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    need(steps >= 1, f"--steps_per_dispatch must be >= 1, not {steps}")
    need(c.val_size >= 1, f"--val_size must be at least 1, got {c.val_size}")
    need(c.pretext in PRETEXTS, f"--pretext must be one of {', '.join(PRETEXTS)}")
    need(
        c.feature_layer in FEATURE_LAYERS,
        f"--feature_layer must be one of {', '.join(FEATURE_LAYERS)}",
    )
    need(c.simclr_lr > 0, f"--simclr_lr must be positive, got {c.simclr_lr}")
    need(
        0.0 <= c.switch_fraction <= 1.0,
        f"--switch_fraction must be in [0, 1], got {c.switch_fraction}",
    )
    need(
        c.pretext != "patches" or c.feature_layer == "final",
        "--pretext=patches has no network layers: leave --feature_layer at final",
    )
    need(
        c.pretext != "patches" or c.pretext_feature == "upright",
        "--pretext=patches has no rotations: leave --pretext_feature at upright",
    )
    if c.pretext != "rotation":
        # PT4AL ranks by rotation losses; training a second (rotation) network just for it
        # would double the pretext cost, so the combination is refused instead.
        need(
            "pt4al" not in c.methods,
            f"pt4al ranks images by rotation losses, which --pretext={c.pretext} does not "
            "produce; run pt4al with --pretext=rotation",
        )
        need(
            c.indicator != "pretext_loss",
            f"--indicator=pretext_loss needs rotation losses, not --pretext={c.pretext}",
        )
    need(c.classifier in CLASSIFIERS, f"--classifier must be one of {', '.join(CLASSIFIERS)}")
    if c.classifier == "linear":
        need(
            c.pretext == "patches",
            "--classifier=linear fits on the patch features: add --pretext=patches",
        )
        need(
            not any(m in NEEDS_MC_DROPOUT for m in c.methods),
            "--classifier=linear has no dropout to sample: drop dbal from --method",
        )
    need(c.bal_sampler in BAL_SAMPLERS, f"--bal_sampler must be one of {BAL_SAMPLERS}")
    need(c.cdd_order in ("ascending", "descending"), "--cdd_order must be ascending or descending")
    need(c.indicator in INDICATORS, f"--indicator must be one of {INDICATORS}")
    need(c.subpools in ("adaptive", "uniform"), "--subpools must be adaptive or uniform")
    need(c.window_variant in ("paper", "released"), "--window_variant must be paper or released")
    need(c.beta is None or c.beta > 0, f"--beta must be positive, got {c.beta}")
    need(len(c.beta_grid) > 0, "--beta_grid needs at least one candidate")
    need(
        all(b > 0 for b in c.beta_grid),
        f"--beta_grid={','.join(f'{b:g}' for b in c.beta_grid)} must hold positive values only",
    )
    num_cycles = len(c.schedule)
    need(
        c.beta_search_cycles is None or c.beta_search_cycles >= 1,
        f"--beta_search_cycles must be at least 1, got {c.beta_search_cycles}",
    )
    # Past the budget's cycles only where a beta search runs: a preset's value (cifar10_cpu
    # searches 2 cycles) does not refuse a one-cycle budget of random or of a fixed --beta.
    need(
        not searches_beta(c) or c.beta_search_cycles is None or c.beta_search_cycles <= num_cycles,
        f"--beta_search_cycles must be in [1, {num_cycles}] (the cycles of the budget), "
        f"got {c.beta_search_cycles}",
    )
    need(
        0 < c.beta_search_fraction <= 1,
        f"--beta_search_fraction must lie in (0, 1], got {c.beta_search_fraction}",
    )
    low = 2 if c.indicator == "cdd" else 1
    need(
        c.num_clusters is None or c.num_clusters >= low,
        f"--num_clusters={c.num_clusters} must be at least {low} (CDD needs a nearest and a "
        "second-nearest center); leave it unset for the number of classes",
    )
    need(c.kmeans_n_init >= 1, f"--kmeans_n_init must be at least 1, got {c.kmeans_n_init}")
    need(c.train.augment in AUGMENTATIONS, f"--augment must be one of {', '.join(AUGMENTATIONS)}")
    need(
        c.pretext_feature in FEATURE_VIEWS,
        f"--pretext_feature must be one of {', '.join(FEATURE_VIEWS)}",
    )
    need(
        c.window_budget is None or c.window_budget >= 1,
        f"--window_budget must be at least 1, got {c.window_budget}",
    )
    need(c.fractions_of in FRACTIONS_OF, f"--fractions_of must be one of {FRACTIONS_OF}")
    need(
        c.resplit_test_fraction is None or 0 < c.resplit_test_fraction < 1,
        f"--resplit_test_fraction must lie in (0, 1), got {c.resplit_test_fraction}",
    )


class Plan(NamedTuple):
    """What a run will do, fixed before any training.

    counts: images labeled per cycle, k_c.
    fraction_base: the N the budget fractions are of (pool, or pool + validation).
    num_clusters: K of the K-means.
    window_budget: A of the released-code windows (None with the paper's windows).
    min_beta: the smallest accepted beta (None when BAL's windows are not in play).
    search_cycles: cycles each beta candidate runs (paper Eq. 9).
    beta_grid: the candidates at or above min_beta, ascending.
    """

    counts: tuple[int, ...]
    fraction_base: int
    num_clusters: int
    window_budget: int | None
    min_beta: float | None
    search_cycles: int
    beta_grid: tuple[float, ...]

    def bal_options(self, c: Config) -> BALOptions:
        return BALOptions(
            sampler=c.bal_sampler,
            uniform_subpools=c.subpools == "uniform",
            window_variant=c.window_variant,
            window_budget=self.window_budget,
            normalize_logits=c.normalize_logits,
        )


def make_plan(c: Config, *, pool_size: int, val_size: int, num_classes: int) -> Plan:
    """Cycle counts, clusters, beta bounds and search budget for the loaded data.

    Args:
      c: a configuration that passed `check_config`.
      pool_size: N, the images the CDD order and the sub-pools cover.
      val_size: validation images carved from the same training set.
      num_classes: classes of the dataset.

    Returns:
      The `Plan`. Raises ConfigError for any setting that would fail later in the run.
    """
    need = _need
    need(num_classes >= 2, f"the dataset has {num_classes} class; BAL needs at least 2")
    base = pool_size if c.fractions_of == "pool" else pool_size + val_size
    try:
        counts = cycle_counts(c.schedule, pool_size=base)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    need(
        sum(counts) <= pool_size,
        f"the budget labels {sum(counts)} images ({c.schedule[-1]:g} of {base} with "
        f"--fractions_of={c.fractions_of}) but the pool holds {pool_size}; use "
        "--fractions_of=pool or a smaller --val_size",
    )
    num_clusters = num_classes if c.num_clusters is None else c.num_clusters
    uses_bal = bool(NEEDS_BETA & set(c.methods))
    needs_clusters = uses_bal and c.indicator != "pretext_loss"
    need(
        not needs_clusters or num_clusters <= pool_size,
        f"--num_clusters={num_clusters} exceeds the {pool_size} images of the pool",
    )
    window_budget = None
    if c.window_variant == "released":
        window_budget = c.window_budget if c.window_budget is not None else counts[-1]
    search = c.beta_search_cycles
    if search is None:
        search = search_cycles(c.schedule, fraction=c.beta_search_fraction)
    plan = Plan(counts, base, num_clusters, window_budget, None, search, ())
    if not uses_bal or c.subpools == "uniform":
        return plan
    lowest = bal_min_beta(counts, pool_size=pool_size, options=plan.bal_options(c))
    if c.beta is not None:
        need(c.beta >= lowest, f"--beta={c.beta} is below its minimum {lowest:.4g} here")
        return plan._replace(min_beta=lowest)
    grid = tuple(sorted({float(b) for b in c.beta_grid if b >= lowest}))
    need(
        len(grid) > 0,
        f"no --beta_grid candidate reaches the minimum beta {lowest:.4g} of this budget "
        f"(got {','.join(f'{b:g}' for b in c.beta_grid)})",
    )
    return plan._replace(min_beta=lowest, beta_grid=grid)
