r"""Which classifier to train on few labels (issue 23), and how many whitened dimensions the
selection features keep (issue 24): each option on random labeled sets of the `cifar10_cpu`
pool, over seeds, scored on the VALIDATION split (which chooses) and the test split (which
only reports), with the wall time of each fit.

    python -m experiments.classifiers --config=cifar10_cpu --sizes=100,300,1000 \
        --seeds=0,1,2,3,4 --out=experiments/reports/classifiers.md

Options (all on k-means patch features fitted on the unlabeled pool, `bal_jax.patch_features`):
- `linear_whitened`: the linear head (`bal_jax.heads`) on the PCA-whitened features that
  selection uses (`patch_features.PCA_DIM` dimensions);
- `linear`: on the standardised 4K-d features;
- `linear_flip`: the same plus each labeled image's mirror image as another row, and flip
  averaging at test time (what the labeling tool's default `--classifier=linear` fits on
  patch features).
Every head's L2 is chosen by 3-fold cross-validation on its labeled set only. The selection
features' PCA dimension (K-means, CDD, TypiClust, ... see the whitened features) is scored by
the 20-NN accuracy (cosine) of the validation images against the labeled set: what an active
learner could measure. The option and the dimension of highest validation mean are chosen; the
test split only reports. The VGG16 from scratch (`small_data` recipe) numbers are in
experiments/reports/noise.md (`python -m experiments.noise --config=cifar10_cpu`).
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags

from bal_jax import heads, patch_features
from bal_jax.keys import named_key
from experiments.config import PRESETS, load_data

OPTIONS = ("linear_whitened", "linear", "linear_flip")
# PCA dimensions of the whitened selection features compared (the default:
# `patch_features.PCA_DIM`); one fit at the largest, the others are its leading
# columns (PCA directions are ordered), bit for bit what a fit at that dimension gives.
PCA_DIMS = (16, 32, 64, 128)
KNN_K = 20


def define_flags() -> None:
    flags.DEFINE_string("config", "cifar10_cpu", "Preset whose pool and test split are used.")
    flags.DEFINE_list("sizes", ["100", "300", "1000"], "Labeled set sizes.")
    flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "Seeds of the random labeled sets.")
    flags.DEFINE_string("out", None, "Markdown report to write (default: print only).")


def labeled_set(pool_size: int, size: int, seed: int) -> np.ndarray:
    """A random labeled set: the same for every option of a (size, seed)."""
    return np.sort(np.asarray(jax.random.choice(jax.random.key(seed), pool_size, (size,), False)))


def evaluate(option, feats, pool_y, eval_y, idx, seed, num_classes):
    """({split: accuracy}, chosen L2, CV accuracy, seconds) of one option on one labeled set;
    `feats` = (pool, {split: features}), each an (upright, mirror or None) pair."""
    (pool, pool_m), evals = feats
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
    accs = {
        split: float(np.mean(head.probs(x, xm).argmax(1) == eval_y[split]))
        for split, (x, xm) in evals.items()
    }
    return accs, head.l2, cv.accuracy, seconds


def knn_vs_labeled(labeled_ND, labels, query_MD, query_y, k: int = KNN_K) -> float:
    """Accuracy of the k-nearest labeled images' majority vote (cosine; ties: lowest class)."""

    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    sims = unit(query_MD) @ unit(labeled_ND).T
    near = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    votes = np.zeros((query_MD.shape[0], int(labels.max()) + 1), np.int64)
    np.add.at(votes, (np.arange(query_MD.shape[0])[:, None], labels[near]), 1)
    return float(np.mean(votes.argmax(1) == query_y))


def table(rows, sizes, split) -> str:
    lines = [
        "| option | " + " | ".join(f"{s} labels" for s in sizes) + " | mean | s per fit (median) |",
        "|---|" + "---|" * (len(sizes) + 2),
    ]
    for option in OPTIONS:
        cells, means = [], []
        for s in sizes:
            accs = [r[split] for r in rows if r["option"] == option and r["size"] == s]
            cells.append(f"{100 * np.mean(accs):.1f} ± {100 * np.std(accs):.1f}")
            means.append(100 * np.mean(accs))
        secs = [r["seconds"] for r in rows if r["option"] == option]
        lines.append(
            f"| `{option}` | "
            + " | ".join(cells)
            + f" | {np.mean(means):.1f} | {np.median(secs):.1f} |"
        )
    return "\n".join(lines)


def chosen(rows, keys, field, name) -> str:
    """The key of highest mean `field` over rows (the validation split's)."""
    means = {k: np.mean([r[field] for r in rows if r[name] == k]) for k in keys}
    return max(keys, key=lambda k: means[k])


def paired(rows, sizes, a, b) -> str:
    out = []
    for s in sizes:
        da = {r["seed"]: r["val"] for r in rows if r["option"] == a and r["size"] == s}
        db = {r["seed"]: r["val"] for r in rows if r["option"] == b and r["size"] == s}
        d = np.asarray([da[k] - db[k] for k in sorted(da)]) * 100
        out.append(f"{s}: {d.mean():+.1f} ± {d.std(ddof=1) if d.size > 1 else 0:.1f}")
    return f"`{a}` minus `{b}` on validation, paired by seed: " + "; ".join(out)


def main(argv):
    del argv
    f = flags.FLAGS
    sizes = [int(s) for s in f.sizes]
    seeds = [int(s) for s in f.seeds]
    c = PRESETS[f.config]()
    data = load_data(c)
    t0 = time.perf_counter()
    key = named_key(named_key(jax.random.key(0), "pretext"), "patches")
    t = patch_features.fit_patch_features(key, data.pool.images, pca_dim=max(PCA_DIMS))

    def views(images):
        flipped = np.ascontiguousarray(images[:, :, ::-1])
        return (
            patch_features.patch_features(t, images),
            patch_features.patch_features(t, images, whiten=False),
            patch_features.patch_features(t, flipped, whiten=False),
        )

    splits = {"val": data.val, "test": data.test}
    pool_w, pool_r, pool_rm = views(data.pool.images)
    ev = {split: views(d.images) for split, d in splits.items()}
    eval_y = {split: d.labels for split, d in splits.items()}
    feature_seconds = time.perf_counter() - t0
    default_dim = patch_features.PCA_DIM  # what the runner's selection and `linear_whitened` see
    feats = {
        "linear_whitened": (
            (pool_w[:, :default_dim], None),
            {s: (v[0][:, :default_dim], None) for s, v in ev.items()},
        ),
        "linear": ((pool_r, None), {s: (v[1], None) for s, v in ev.items()}),
        "linear_flip": ((pool_r, pool_rm), {s: (v[1], v[2]) for s, v in ev.items()}),
    }
    rows, knn_rows = [], []
    for size in sizes:
        for seed in seeds:
            idx = labeled_set(data.pool.labels.shape[0], size, seed)
            y = data.pool.labels[idx]
            for dim in PCA_DIMS:
                knn = {
                    s: knn_vs_labeled(pool_w[idx, :dim], y, v[0][:, :dim], eval_y[s])
                    for s, v in ev.items()
                }
                knn_rows.append(dict(dim=dim, size=size, seed=seed, **knn))
            for option in OPTIONS:
                accs, l2, cv, sec = evaluate(
                    option,
                    feats[option],
                    data.pool.labels,
                    eval_y,
                    idx,
                    seed,
                    len(data.class_names),
                )
                rows.append(
                    dict(option=option, size=size, seed=seed, **accs, l2=l2, cv=cv, seconds=sec)
                )
                print(
                    f"{option} {size} seed {seed}: validation {100 * accs['val']:.1f}%, test "
                    f"{100 * accs['test']:.1f}% (L2 {l2:g}, CV {100 * cv:.1f}%, {sec:.1f}s)",
                    flush=True,
                )
    best = chosen(rows, OPTIONS, "val", "option")
    best_dim = chosen(knn_rows, PCA_DIMS, "val", "dim")
    knn_lines = [
        "| PCA dimensions | " + " | ".join(f"{s} labels: val / test" for s in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for dim in PCA_DIMS:
        cells = []
        for s in sizes:
            rs = [r for r in knn_rows if r["dim"] == dim and r["size"] == s]
            val, test = (100 * np.mean([r[k] for r in rs]) for k in ("val", "test"))
            cells.append(f"{val:.1f} / {test:.1f}")
        lines_dim = f"**{dim}**" if dim == best_dim else str(dim)
        knn_lines.append(f"| {lines_dim} | " + " | ".join(cells) + " |")
    report = "\n\n".join(
        [
            "# Classifiers on few labels and the selection features' dimension: CIFAR-10 at "
            "CPU scale (issues 23, 24)",
            "Command: `python -m experiments.classifiers --config="
            f"{f.config} --sizes={','.join(map(str, sizes))} --seeds="
            f"{','.join(map(str, seeds))} --out=experiments/reports/classifiers.md`",
            f"Pool: the `{f.config}` preset's {data.pool.labels.shape[0]} training images; "
            f"validation: its {data.val.labels.shape[0]} validation images (**what chooses**); "
            f"test: its {data.test.labels.shape[0]} test images (only reported). Labeled sets: "
            "uniformly random from the pool, one per (size, seed), the same for every option. "
            "Patch features fitted once on the unlabeled pool "
            f"({feature_seconds:.0f} s for pool + validation + test, upright and mirrored). "
            "Each head's L2 is chosen by 3-fold cross-validation on its labeled set (grid "
            f"{', '.join(f'{g:g}' for g in heads.L2_GRID)}).",
            "## Classifier: validation accuracy % (chooses)",
            table(rows, sizes, "val"),
            f"Chosen on validation (highest mean over the sizes): **`{best}`**.",
            paired(rows, sizes, "linear_flip", "linear") + ".",
            paired(rows, sizes, "linear", "linear_whitened") + ".",
            "## Classifier: test accuracy % (reports only)",
            table(rows, sizes, "test"),
            "Mean ± std over seeds; seconds per fit include the cross-validation "
            f"({len(heads.L2_GRID)} L2 values x 3 folds) and the final fit, on the shared "
            "2-core CPU (the first fit of each shape includes XLA compilation).",
            "VGG16 from scratch, `small_data` recipe, width 1/8 (experiments/reports/noise.md, "
            "one random labeled set, 5 training seeds): 31.2 ± 2.7 % test accuracy at 200 "
            "labels, 45.7 ± 2.2 % at 1,000, 30-60 s per fit on this CPU.",
            "## Selection features: PCA dimensions",
            f"{KNN_K}-NN accuracy % (cosine) of the validation / test images against the "
            "labeled set, on the whitened patch features with that many PCA dimensions "
            "(what K-means, the CDD order, TypiClust, ProbCover and MaxHerding see):",
            "\n".join(knn_lines),
            f"Chosen on validation (highest mean over sizes and seeds): **{best_dim}** "
            "dimensions (`fit_patch_features(pca_dim=...)`; the runner and the labeling tool "
            f"use `patch_features.PCA_DIM` = {patch_features.PCA_DIM}).",
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
