"""The lever measurements of experiments/reports/noise.md ("Levers tried after the recipe").

From the repository root (appends one JSON row per training to levers.jsonl beside this file):

    python -m experiments.reports.noise_cifar10_cpu.levers base,wd5e-3,deb99 1000 0,1,2,3,4
    python -m experiments.reports.noise_cifar10_cpu.levers paper,base,no_ema,paper640 1000 0,1,2

Each variant changes one thing of the `small_data` recipe (or of fit's arguments) and trains the
`cifar10_cpu` preset's main model on the fixed random labeled set of `experiments.noise` (same
size, same images; `experiments.noise.train_once`), once per training seed. `fix_init` /
`fix_order` split the seed's two sources of randomness: the initial weights are seed 0's and the
data order and augmentation the seed's, or the other way round. Seeds run in the outer loop, so
the variants of one seed run side by side (the second command times the recipes: its first seed
also compiles).
"""

import json
import os
import sys

from bal_jax import train
from experiments import config as config_lib
from experiments.noise import labeled_set, train_once

S = train.RECIPES["small_data"]
PAPER = train.RECIPES["paper"]
VARIANTS = {
    "paper": (PAPER, {}),
    "paper640": (PAPER._replace(min_steps=640), {}),
    "base": (S, {}),
    "no_ema": (S._replace(ema_decay=0.0), {}),
    "wd5e-3": (S, {"weight_decay": 5e-3}),
    "wd2e-3": (S, {"weight_decay": 2e-3}),
    "lr025": (S, {"learning_rate": 0.025}),
    "ls2": (S._replace(label_smoothing=0.2), {}),
    "ema995": (S._replace(ema_decay=0.995), {}),
    "deb99": (S._replace(ema_debias=True), {}),
    "deb995": (S._replace(ema_debias=True, ema_decay=0.995), {}),
    "bs128": (S._replace(min_steps=320), {"batch_size": 128}),
    "fix_init": (S, {}),
    "fix_order": (S, {}),
}
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "levers.jsonl")


def main(names, size, seeds):
    cfg = config_lib.PRESETS["cifar10_cpu"]()
    data = config_lib.load_data(cfg)
    idx = labeled_set(data.pool.images.shape[0], size, data_seed=cfg.data_seed)
    for seed in seeds:
        for name in names:
            recipe, changes = VARIANTS[name]
            train_seed, init_seed = seed, None
            if name == "fix_init":
                init_seed = 0
            elif name == "fix_order":
                train_seed, init_seed = 0, seed
            out = train_once(
                cfg, data, idx, train_seed, recipe=recipe, init_seed=init_seed, **changes
            )
            row = {
                "variant": name,
                "size": size,
                "seed": seed,
                "acc": out["accuracy"],
                "val_acc": out["val_accuracy"],
                "train_s": round(out["train_s"], 1),
                "steps": out["steps"],
            }
            print(json.dumps(row), flush=True)
            with open(OUT, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    usage = "usage: python -m experiments.reports.noise_cifar10_cpu.levers VARIANTS SIZE SEEDS"
    if len(sys.argv) != 4:
        sys.exit(f"error: {usage}")
    variants = sys.argv[1].split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"error: unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    try:
        size, seeds = int(sys.argv[2]), [int(s) for s in sys.argv[3].split(",")]
    except ValueError:
        sys.exit(f"error: SIZE and SEEDS take integers; {usage}")
    main(variants, size, seeds)
