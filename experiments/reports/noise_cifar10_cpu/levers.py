"""The lever measurements of experiments/reports/noise.md ("Levers tried after the recipe").

From the repository root (appends one JSON row per training to levers.jsonl beside this file):

    python -m experiments.reports.noise_cifar10_cpu.levers base,wd5e-3,deb99 1000 0,1,2,3,4

Each variant changes one thing of the `small_data` recipe (or of fit's arguments) and trains the
`cifar10_cpu` preset's main model on the fixed random labeled set of `experiments.noise` (same
size, same images), once per training seed. `fix_init` / `fix_order` split the seed's two
sources of randomness: the weights' initialisation key is seed 0's and the training key
(data order, augmentation) the seed's, or the other way round.
"""

import json
import os
import sys
import time

import jax
import numpy as np
from flax import nnx

from bal_jax import train
from bal_jax.active_loop import named_key
from bal_jax.models import VGG16
from experiments import config as config_lib
from experiments.noise import labeled_set
from experiments.pipeline import load_data

S = train.RECIPES["small_data"]
VARIANTS = {
    "paper": (train.RECIPES["paper"], {}),
    "base": (S, {}),
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
    data = load_data(cfg)
    idx = labeled_set(data.pool.images.shape[0], size, data_seed=cfg.data_seed)
    ev = {"batch_size": cfg.eval_batch_size, "mean": data.mean, "std": data.std}
    for name in names:
        recipe, changes = VARIANTS[name]
        for seed in seeds:
            key = jax.random.key(seed)
            init_key = jax.random.key(0) if name == "fix_init" else key
            train_key = jax.random.key(0) if name == "fix_order" else key
            model = VGG16(
                len(data.class_names),
                in_channels=data.pool.images.shape[-1],
                width=cfg.width,
                rngs=nnx.Rngs(named_key(init_key, "main_init")),
            )
            kwargs = {
                "epochs": cfg.epochs,
                "batch_size": cfg.batch_size,
                "learning_rate": cfg.lr,
                "milestones": cfg.milestones,
                "mean": data.mean,
                "std": data.std,
                "recipe": recipe,
                **changes,
            }
            t0 = time.perf_counter()
            history = train.fit(
                named_key(train_key, "main_train"),
                model,
                data.pool.images[idx],
                data.pool.labels[idx],
                **kwargs,
            )
            seconds = time.perf_counter() - t0
            logits = train.predict(model, data.test.images, tta_flip=recipe.tta_flip, **ev)
            acc = float(np.mean(np.argmax(logits.logits_NC, -1) == data.test.labels))
            row = {
                "variant": name,
                "size": size,
                "seed": seed,
                "acc": acc,
                "train_s": round(seconds, 1),
                "steps": int(history["epochs"] * history["steps_per_epoch"]),
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
