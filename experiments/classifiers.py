r"""Which classifier to train on few labels (issue 23): test accuracy of each option on random
labeled sets of the `cifar10_cpu` pool, over seeds, with the wall time of each fit.

    python -m experiments.classifiers --config=cifar10_cpu --sizes=100,300,1000 \
        --seeds=0,1,2,3,4 --out=experiments/reports/classifiers.md

Options (all on k-means patch features fitted on the unlabeled pool, `bal_jax.patch_features`):
- `linear_whitened`: the linear head (`bal_jax.heads`) on the 64-d PCA-whitened features
  that selection uses;
- `linear`: on the standardised 4K-d features;
- `linear_flip`: the same plus each labeled image's mirror image as another row, and flip
  averaging at test time (what the labeling tool's default `--classifier=linear` fits on
  patch features).
Every head's L2 is chosen by 3-fold cross-validation on its labeled set only; the test split
only reports. The VGG16 from scratch (`small_data` recipe) numbers are in
experiments/reports/noise.md (`python -m experiments.noise --config=cifar10_cpu`).
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags

from bal_jax import heads, patch_features
from bal_jax.keys import named_key
from experiments.config import PRESETS
from experiments.pipeline import load_data

OPTIONS = ("linear_whitened", "linear", "linear_flip")


def define_flags() -> None:
    flags.DEFINE_string("config", "cifar10_cpu", "Preset whose pool and test split are used.")
    flags.DEFINE_list("sizes", ["100", "300", "1000"], "Labeled set sizes.")
    flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "Seeds of the random labeled sets.")
    flags.DEFINE_string("out", None, "Markdown report to write (default: print only).")


def labeled_set(pool_size: int, size: int, seed: int) -> np.ndarray:
    """A random labeled set: the same for every option of a (size, seed)."""
    return np.sort(np.asarray(jax.random.choice(jax.random.key(seed), pool_size, (size,), False)))


def evaluate(option, feats, pool_y, test_y, idx, seed, num_classes):
    """(test accuracy, chosen L2, CV accuracy, seconds) of one option on one labeled set."""
    (pool, pool_m), (test, test_m) = feats
    t0 = time.perf_counter()
    head, cv = heads.fit_head(
        jax.random.key(seed),
        pool[idx],
        pool_y[idx],
        num_classes=num_classes,
        reference=pool,
        mirrored=None if pool_m is None else pool_m[idx],
    )
    seconds = time.perf_counter() - t0
    pred = head.probs(test, test_m).argmax(1)
    return float(np.mean(pred == test_y)), head.l2, cv.accuracy, seconds


def table(rows, sizes) -> str:
    lines = [
        "| option | " + " | ".join(f"{s} labels" for s in sizes) + " | s per fit (median) |",
        "|---|" + "---|" * (len(sizes) + 1),
    ]
    for option in OPTIONS:
        cells = []
        for s in sizes:
            accs = [r["accuracy"] for r in rows if r["option"] == option and r["size"] == s]
            cells.append(f"{100 * np.mean(accs):.1f} ± {100 * np.std(accs):.1f}")
        secs = [r["seconds"] for r in rows if r["option"] == option]
        lines.append(f"| `{option}` | " + " | ".join(cells) + f" | {np.median(secs):.1f} |")
    return "\n".join(lines)


def paired(rows, sizes, a, b) -> str:
    out = []
    for s in sizes:
        da = {r["seed"]: r["accuracy"] for r in rows if r["option"] == a and r["size"] == s}
        db = {r["seed"]: r["accuracy"] for r in rows if r["option"] == b and r["size"] == s}
        d = np.asarray([da[k] - db[k] for k in sorted(da)]) * 100
        out.append(f"{s}: {d.mean():+.1f} ± {d.std(ddof=1) if d.size > 1 else 0:.1f}")
    return f"`{a}` minus `{b}`, paired by seed: " + "; ".join(out)


def main(argv):
    del argv
    f = flags.FLAGS
    sizes = [int(s) for s in f.sizes]
    seeds = [int(s) for s in f.seeds]
    c = PRESETS[f.config]()
    data = load_data(c)
    t0 = time.perf_counter()
    key = named_key(named_key(jax.random.key(0), "pretext"), "patches")
    t = patch_features.fit_patch_features(key, data.pool.images)

    def views(images):
        flipped = np.ascontiguousarray(images[:, :, ::-1])
        return (
            patch_features.patch_features(t, images),
            patch_features.patch_features(t, images, whiten=False),
            patch_features.patch_features(t, flipped, whiten=False),
        )

    pool_w, pool_r, pool_rm = views(data.pool.images)
    test_w, test_r, test_rm = views(data.test.images)
    feature_seconds = time.perf_counter() - t0
    feats = {
        "linear_whitened": ((pool_w, None), (test_w, None)),
        "linear": ((pool_r, None), (test_r, None)),
        "linear_flip": ((pool_r, pool_rm), (test_r, test_rm)),
    }
    rows = []
    for size in sizes:
        for seed in seeds:
            idx = labeled_set(data.pool.labels.shape[0], size, seed)
            for option in OPTIONS:
                acc, l2, cv, sec = evaluate(
                    option,
                    feats[option],
                    data.pool.labels,
                    data.test.labels,
                    idx,
                    seed,
                    len(data.class_names),
                )
                rows.append(
                    dict(
                        option=option, size=size, seed=seed, accuracy=acc, l2=l2, cv=cv, seconds=sec
                    )
                )
                print(
                    f"{option} {size} seed {seed}: {100 * acc:.1f}% (L2 {l2:g}, CV "
                    f"{100 * cv:.1f}%, {sec:.1f}s)",
                    flush=True,
                )
    report = "\n\n".join(
        [
            "# Classifiers on few labels: CIFAR-10 at CPU scale (issue 23)",
            "Command: `python -m experiments.classifiers --config="
            f"{f.config} --sizes={','.join(map(str, sizes))} --seeds="
            f"{','.join(map(str, seeds))} --out=experiments/reports/classifiers.md`",
            f"Pool: the `{f.config}` preset's {data.pool.labels.shape[0]} training images; test: "
            f"its {data.test.labels.shape[0]} test images (only reported). Labeled sets: "
            "uniformly random from the pool, one per (size, seed), the same for every option. "
            "Patch features fitted once on the unlabeled pool "
            f"({feature_seconds:.0f} s for pool + test, upright and mirrored). Each head's L2 "
            "is chosen by 3-fold cross-validation on its labeled set (grid "
            f"{', '.join(f'{g:g}' for g in heads.L2_GRID)}); no test image chooses anything.",
            table(rows, sizes),
            "Test accuracy %, mean ± std over seeds; seconds per fit include the "
            f"cross-validation ({len(heads.L2_GRID)} L2 values x 3 folds, one jitted call) and the "
            "final fit, on the shared 2-core CPU (the first fit of each shape includes XLA "
            "compilation).",
            paired(rows, sizes, "linear_flip", "linear") + ".",
            paired(rows, sizes, "linear", "linear_whitened") + ".",
            "VGG16 from scratch, `small_data` recipe, width 1/8 (experiments/reports/noise.md, "
            "one random labeled set, 5 training seeds): 32.4 ± 1.7 % at 200 labels, "
            "47.3 ± 1.4 % at 1,000, 1-2 minutes per fit on this CPU.",
            "Chosen L2 per fit: "
            + "; ".join(
                f"{o} {s}: "
                + ",".join(f"{r['l2']:g}" for r in rows if r["option"] == o and r["size"] == s)
                for o in OPTIONS
                for s in sizes
            ),
        ]
    )
    print(report)
    if f.out:
        with open(f.out, "w") as fh:
            fh.write(report + "\n")


if __name__ == "__main__":
    define_flags()
    app.run(main)
