r"""How much does a trained model's accuracy move with the training seed alone?

    python -m experiments.noise --config=cifar10_cpu                 # paper vs small_data recipe
    python -m experiments.noise --config=cifar10_cpu --sizes=200,1000 --seeds=0,1,2,3,4 \
        --recipes=paper,small_data --workdir=runs/noise_cifar10_cpu

Active-learning methods are compared on models trained from a few hundred labels; if the same
labeled set gives accuracies points apart from one training seed to the next, no method can be
shown better than another. For each size this draws one fixed random labeled set from the
preset's pool (seeded by `data_seed` and the size, the same for every recipe and seed), trains
the preset's main model on it once per (recipe, training seed) from a fresh initialisation, and
reports the test accuracy's mean, std, min and max, the collapsed trainings (one class for more
than COLLAPSE_SHARE of the validation images) and the median training seconds, every recipe
side by side. Rows are appended to `noise.jsonl` in the workdir, so an interrupted run resumes;
the table goes to `noise.md`.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np
from absl import app, flags, logging

from bal_jax import train
from bal_jax.active_loop import COLLAPSE_SHARE, collapse_share
from bal_jax.learners import VGGLearner
from bal_jax.settings import ModelSpec, fit_kwargs
from experiments import config as config_lib
from experiments import report
from experiments.config import ConfigError, load_data, override
from experiments.plan import check_config


def define_flags() -> None:
    """The command's flags (defined on demand: `experiments.main` owns some of the names)."""
    flags.DEFINE_enum("config", "cifar10_cpu", list(config_lib.PRESETS), "Preset.")
    flags.DEFINE_list("sizes", ["200", "1000"], "Labeled set sizes.")
    flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "Training seeds.")
    flags.DEFINE_list("recipes", list(train.RECIPES), "Recipes to compare.")
    flags.DEFINE_string("workdir", None, "Output folder (default runs/noise_<preset>).")


def labeled_set(pool_size: int, size: int, *, data_seed: int) -> np.ndarray:
    """The fixed random labeled set of `size` pool indices (sorted), the same for all runs."""
    if not 1 <= size <= pool_size:
        raise ValueError(f"a labeled set of {size} does not fit the pool of {pool_size}")
    rng = np.random.default_rng([data_seed, size])
    return np.sort(rng.choice(pool_size, size, replace=False))


def train_once(
    cfg: config_lib.Config,
    data,
    idx: np.ndarray,
    seed: int,
    *,
    recipe: train.Recipe | None = None,
    init_seed: int | None = None,
    **fit_changes,
) -> dict:
    """Trains the preset's main model on pool[idx] as the runner's first cycle would
    (`bal_jax.learners.VGGLearner`, from scratch, training seed `seed`); validation and test
    metrics.

    `recipe` (default: the preset's) and `fit_changes` (e.g. ``weight_decay=5e-3``) override
    the preset's training; `init_seed` (default `seed`) draws the initial weights from another
    seed than the data order and augmentation.
    """
    settings = cfg.train
    if recipe is not None:
        settings = settings._replace(recipe=recipe)
    learner = VGGLearner(
        jax.random.key(seed),
        method="random",
        pool=data.pool,
        splits={"evaluation": data.test, "validation": data.val},
        model=ModelSpec(len(data.class_names), data.pool.images.shape[-1], cfg.width),
        settings=settings,
        mean=data.mean,
        std=data.std,
        warm_start=False,
        model_store=None,
        mesh=None,
        fit_kwargs=fit_kwargs(settings, data.mean, data.std, None) | fit_changes,
        init_key=None if init_seed is None else jax.random.key(init_seed),
    )
    t0 = time.perf_counter()
    info = learner.fit(0, np.asarray(idx))
    seconds = time.perf_counter() - t0
    test = learner.logits("evaluation")
    val = learner.logits("validation")
    share = collapse_share(val)
    return {
        "accuracy": float(np.mean(np.argmax(test, -1) == data.test.labels)),
        "val_accuracy": float(np.mean(np.argmax(val, -1) == data.val.labels)),
        "majority_share": share,
        "collapsed": share > COLLAPSE_SHARE,
        "train_s": round(seconds, 2),
        "steps": info["steps"],
    }


def noise_table(rows: list[dict], recipes, sizes) -> str:
    """Markdown: one row per (labels, recipe): test mean / std / min / max, collapses, steps,
    seconds, and the validation mean (the column a choice between recipes may be made on)."""
    lines = [
        "| labels | recipe | seeds | mean | std | min | max | collapsed | steps "
        "| train s (median) | validation mean |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        for name in recipes:
            rs = [r for r in rows if r["size"] == size and r["recipe"] == name]
            if not rs:
                continue
            acc = 100 * np.array([r["accuracy"] for r in rs])
            std = f"{np.std(acc, ddof=1):.2f}" if acc.size > 1 else "–"
            val = [100 * r["val_accuracy"] for r in rs if "val_accuracy" in r]
            val_mean = f"{np.mean(val):.2f}" if len(val) == len(rs) else "–"
            lines.append(
                f"| {size} | {name} | {len(rs)} | {acc.mean():.2f} | {std} | {acc.min():.2f} "
                f"| {acc.max():.2f} | {sum(r['collapsed'] for r in rs)} "
                f"| {int(np.median([r['steps'] for r in rs]))} "
                f"| {np.median([r['train_s'] for r in rs]):.1f} | {val_mean} |"
            )
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    base = config_lib.PRESETS[f.config]()
    try:
        sizes = [int(s) for s in f.sizes]
        seeds = [int(s) for s in f.seeds]
    except ValueError:
        sys.exit("error: --sizes and --seeds take comma-separated integers")
    recipes = list(f.recipes)
    unknown = [r for r in recipes if r not in train.RECIPES]
    if unknown:
        sys.exit(f"error: unknown recipe(s) {unknown}; choose from {', '.join(train.RECIPES)}")
    try:
        for name in recipes:
            check_config(override(base, recipe=name))
        data = load_data(base)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    pool_size = data.pool.images.shape[0]
    bad = [s for s in sizes if not 1 <= s <= pool_size]
    if bad:
        sys.exit(f"error: --sizes {bad} do not fit the pool of {pool_size} images")
    workdir = f.workdir or f"runs/noise_{base.preset}"
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "noise.jsonl")
    rows = report.read_jsonl(path) if os.path.exists(path) else []
    done = {(r["recipe"], r["size"], r["seed"]) for r in rows}
    t_start = time.perf_counter()
    for size in sizes:
        idx = labeled_set(pool_size, size, data_seed=base.data_seed)
        for name in recipes:
            cfg = override(base, recipe=name)
            for seed in seeds:
                if (name, size, seed) in done:
                    continue
                row = {
                    "recipe": name,
                    "size": size,
                    "seed": seed,
                    **train_once(cfg, data, idx, seed),
                }
                rows.append(row)
                report.write_jsonl(path, rows)
                flag = "  COLLAPSED" if row["collapsed"] else ""
                print(
                    f"{size} labels, {name}, seed {seed}: test {100 * row['accuracy']:.2f}% "
                    f"({row['steps']} steps, {row['train_s']:.1f}s){flag}",
                    flush=True,
                )
    table = noise_table(rows, recipes, sizes)
    text = "\n".join(
        [
            f"# Training-seed noise, preset `{base.preset}`",
            "",
            table,
            "",
            f"Test accuracy (%) on {data.test.images.shape[0]} test images (validation mean: on "
            f"the {data.val.images.shape[0]} validation images, the split a recipe is chosen "
            "on; the test split only reports) of models trained "
            f"from scratch on one fixed random labeled set per size (pool of {pool_size}), one "
            f"row per recipe; VGG16 width {base.width}, {base.train.epochs} epochs, batch "
            f"{base.train.batch_size}, lr {base.train.learning_rate}; collapsed = one class for "
            f"more than {100 * COLLAPSE_SHARE:.0f}% of the {data.val.images.shape[0]} validation "
            f"images. Wall time of this invocation: {time.perf_counter() - t_start:.0f}s.",
            "",
        ]
    )
    report.atomic_write(os.path.join(workdir, "noise.md"), text)
    print(text)


if __name__ == "__main__":
    define_flags()
    app.run(main)
