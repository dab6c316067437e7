r"""The patch features' settings chosen on the validation split (issue 24, item 1): dictionary
size, patch side, and the contrast-normalisation and ZCA regularisers, one at a time around the
default, on the `cifar10_cpu` pool.

    python -m experiments.feature_settings --config=cifar10_cpu --seeds=0,1,2,3,4 \
        --out=experiments/reports/feature_settings.md

Issue 11 chose these settings by the 20-NN accuracy of the POOL images with their labels, which
an active learner does not have. Here every setting is fitted on the unlabeled pool (same key
as the runner's) and scored only with labels an active learner could have: random labeled sets
of the pool (100, 300 and 1,000 images, one per seed, the same for every setting) and the
validation split:
- the linear head (`bal_jax.heads`, the runner's and labeling tool's classifier: standardised
  features of each image and its mirror, L2 by 3-fold CV on the labeled set) on the labeled
  set, its accuracy on the validation images: **what chooses**;
- the 20-NN accuracy (cosine) of the validation images against the labeled set on the 32-d
  whitened features (what K-means, the CDD order and the coverage selectors see): reported.
The test split is not computed: nothing here reports a result, only a choice.
"""

from __future__ import annotations

import inspect
import time

import jax
import numpy as np
from absl import app, flags

from bal_jax import heads, patch_features
from bal_jax.keys import named_key
from experiments import report
from experiments.classifiers import knn_vs_labeled, labeled_set
from experiments.config import PRESETS, load_data

# The settings compared, at `fit_patch_features`'s defaults (what the runner and the labeling
# tool fit).
_FIT_DEFAULTS = inspect.signature(patch_features.fit_patch_features).parameters
DEFAULT = {k: _FIT_DEFAULTS[k].default for k in ("num_centers", "patch", "contrast_eps", "zca_eps")}
# One setting changed at a time (Coates et al. 2011 used contrast eps 10 and ZCA eps 0.1 on
# the 0..255 scale, 6x6 patches; more centres help them up to 1,600 with an SVM).
GRID = (
    {},
    {"num_centers": 128},
    {"num_centers": 512},
    {"patch": 5},
    {"patch": 8},
    {"contrast_eps": 10.0},
    {"contrast_eps": 255.0},
    {"zca_eps": 0.01},
    {"zca_eps": 1.0},
)
# A setting replaces the default when its paired gain is this many standard errors above 0.
NOISE_T = 2.0


def define_flags() -> None:
    flags.DEFINE_string("config", "cifar10_cpu", "Preset whose pool and validation are used.")
    flags.DEFINE_list("sizes", ["100", "300", "1000"], "Labeled set sizes.")
    flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "Seeds of the random labeled sets.")
    flags.DEFINE_string("out", None, "Markdown report to write (default: print only).")


def name(change: dict) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in change.items()) or "default"


def score(settings: dict, data, sizes, seeds) -> tuple[list[dict], float]:
    """Rows of (size, seed, head validation accuracy, 20-NN validation accuracy) and the fit's
    seconds for one setting."""
    t0 = time.perf_counter()
    key = named_key(named_key(jax.random.key(0), "pretext"), "patches")  # the runner's seed 0
    t = patch_features.fit_patch_features(key, data.pool.images, **settings)
    pool_h = heads.split_views(patch_features.head_views(t, data.pool.images))
    val_h = heads.split_views(patch_features.head_views(t, data.val.images))
    # The whitened features are the standardised upright ones times the PCA matrix.
    pool_w, val_w = pool_h[0] @ t.pca_FD, val_h[0] @ t.pca_FD
    seconds = time.perf_counter() - t0
    rows = []
    num_classes = int(data.pool.labels.max()) + 1
    for size in sizes:
        for seed in seeds:
            idx = labeled_set(data.pool.labels.shape[0], size, seed)
            y = data.pool.labels[idx]
            head, _ = heads.fit_head(
                jax.random.key(seed),
                pool_h[0][idx],
                y,
                num_classes=num_classes,
                reference=pool_h[0],
                mirrored=pool_h[1][idx],
            )
            head_acc = float(np.mean(head.probs(*val_h).argmax(1) == data.val.labels))
            knn = knn_vs_labeled(pool_w[idx], y, val_w, data.val.labels)
            rows.append(dict(size=size, seed=seed, head=head_acc, knn=knn))
    return rows, seconds


def paired_gain(rows, base, num_sizes: int, num_seeds: int) -> tuple[float, float]:
    """Head validation accuracy of `rows` minus `base` in points, paired by (size, seed): the
    mean over sizes per seed, then (mean, std) over seeds."""
    d = 100 * (np.array([r["head"] for r in rows]) - np.array([r["head"] for r in base]))
    per_seed = d.reshape(num_sizes, num_seeds).mean(0)
    return float(per_seed.mean()), float(per_seed.std(ddof=1)) if num_seeds > 1 else 0.0


def main(argv):
    del argv
    f = flags.FLAGS
    sizes = [int(s) for s in f.sizes]
    seeds = [int(s) for s in f.seeds]
    data = load_data(PRESETS[f.config]())
    results = {}
    for change in GRID:
        rows, seconds = score(DEFAULT | change, data, sizes, seeds)
        results[name(change)] = (rows, seconds)
        mean = 100 * np.mean([r["head"] for r in rows])
        print(f"{name(change)}: head validation {mean:.2f}% ({seconds:.0f}s)", flush=True)

    def mean_of(rows, field, size=None):
        return 100 * np.mean([r[field] for r in rows if size is None or r["size"] == size])

    base = results["default"][0]
    best = max(results, key=lambda k: mean_of(results[k][0], "head"))
    lines = [
        "| setting | "
        + " | ".join(f"{s} labels: head / 20-NN" for s in sizes)
        + " | head mean | head − default, paired | fit s |",
        "|---|" + "---|" * (len(sizes) + 3),
    ]
    for k, (rows, seconds) in results.items():
        cells = [f"{mean_of(rows, 'head', s):.1f} / {mean_of(rows, 'knn', s):.1f}" for s in sizes]
        mean, std = paired_gain(rows, base, len(sizes), len(seeds))
        diff = "—" if k == "default" else f"{mean:+.2f} ± {std:.2f}"
        label = f"**{k}**" if k == best else k
        lines.append(
            f"| {label} | "
            + " | ".join(cells)
            + f" | {mean_of(rows, 'head'):.2f} | {diff} | {seconds:.0f} |"
        )
    knn_best = max(results, key=lambda k: mean_of(results[k][0], "knn"))
    gain = paired_gain(results[best][0], base, len(sizes), len(seeds))
    changes = best != "default" and gain[0] > NOISE_T * gain[1] / np.sqrt(len(seeds))
    if best == "default":
        verdict = "the default has the highest mean: it stays."
    elif changes:
        verdict = (
            f"it leads the default by {gain[0]:+.2f} ± {gain[1]:.2f}, beyond seed noise: "
            "the default changes to it."
        )
    else:
        verdict = (
            f"it leads the default by {gain[0]:+.2f} ± {gain[1]:.2f}, within seed noise "
            f"(mean below {NOISE_T:g} standard errors): the default stays."
        )
    text = "\n\n".join(
        [
            "# Patch-feature settings chosen on validation: CIFAR-10 at CPU scale (issue 24)",
            "Command: `python -m experiments.feature_settings --config="
            f"{f.config} --seeds={','.join(map(str, seeds))} "
            "--out=experiments/reports/feature_settings.md`",
            f"Pool: the `{f.config}` preset's {data.pool.labels.shape[0]} training images "
            f"(the transform is fitted on them, no labels); validation: its "
            f"{data.val.labels.shape[0]} validation images (**what chooses**). Labeled sets: "
            "uniformly random from the pool, one per (size, seed), the same for every setting. "
            f"Default: {', '.join(f'{k}={v:g}' for k, v in DEFAULT.items())}; each other row "
            "changes one of them.",
            "Validation accuracy % of the linear head (the classifier of the runner's linear "
            "tables and of the labeling tool; chooses) / 20-NN accuracy % of the 32-d whitened "
            "selection features (reported), mean over seeds; head − default: paired by seed, "
            "mean over sizes, ± std over seeds:",
            "\n".join(lines),
            f"Highest validation head mean: **{best}**; {verdict} Rule: a setting replaces "
            "the default only when its gain, paired by seed, exceeds "
            f"{NOISE_T:g} standard errors over the seeds (the labeling default's rule). "
            f"Highest 20-NN mean: {knn_best}.",
        ]
    )
    print(text)
    if f.out:
        report.atomic_write(f.out, text + "\n")


if __name__ == "__main__":
    define_flags()
    app.run(main)
