r"""How good are the pretext features BAL clusters? A check that needs no training.

    python -m experiments.diagnose --config=cifar10_cpu --seeds=0,1,2
    python -m experiments.diagnose --config=cifar10_cpu --pretext=simclr --pretext_epochs=30 \
        --feature_layer=block4 --seeds=0          # the features of that run's settings

For each seed, reads the cached pretext features of the run's settings (the runner's
`--pretext_dir`, default `pretext/` beside `--workdir`) and clusters them, and the raw pixels as a
reference, with BAL's own K-means (K = the number of classes). It prints how well the
features know the true classes (leave-one-out 20-NN accuracy, cosine) and how well the clusters
match them (purity, normalised mutual information) and how the classes
spread along BAL's CDD order: the share of the most frequent class in the first and last
tenth of the order (the first sub-pools BAL draws from are at the start). The labels are
used here for diagnosis only; BAL never sees them.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
from absl import app, flags, logging

from bal_jax.diagnostics import knn_accuracy, nmi, pooled_pixels, purity
from bal_jax.kmeans import cdd_order, kmeans
from experiments import main as runner
from experiments.config import ConfigError, load_data
from experiments.pipeline import default_pretext_dir, pretext_cache_dir


def describe(key, feats_ND: np.ndarray, labels_N: np.ndarray, num_classes: int) -> dict:
    """20-NN accuracy, purity, NMI and the class shares at both ends of the CDD order."""
    result = kmeans(key, feats_ND, num_classes)
    clusters = np.asarray(result.assignments)
    order = np.asarray(cdd_order(feats_ND, result.centers))
    tenth = max(1, labels_N.size // 10)

    def largest_share(idx):
        return float(np.bincount(labels_N[idx], minlength=num_classes).max() / idx.size)

    return {
        "knn": knn_accuracy(feats_ND, labels_N, k=20),
        "purity": purity(labels_N, clusters),
        "nmi": nmi(labels_N, clusters),
        "first_tenth_largest_class": largest_share(order[:tenth]),
        "last_tenth_largest_class": largest_share(order[-tenth:]),
    }


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    try:
        cfg = runner.build_config(flags.FLAGS)
        d = load_data(cfg)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    pretext_dir = flags.FLAGS["pretext_dir"].value or default_pretext_dir(
        runner.default_workdir(cfg)
    )
    cache = pretext_cache_dir(cfg, pretext_dir)
    labels = np.asarray(d.pool.labels)
    num_classes = len(d.class_names)
    mean = np.asarray(d.mean, np.float32)
    std = np.asarray(d.std, np.float32)
    pixels = ((d.pool.images.astype(np.float32) / 255.0 - mean) / std).reshape(labels.size, -1)
    pooled = pooled_pixels(d.pool.images, size=8, mean=mean, std=std)
    rows = [
        "| features | seed | 20-NN acc. | K-means purity | NMI | largest class in first 10% of "
        "CDD order | ... in last 10% |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed in cfg.seeds:
        path = f"{cache}/seed{seed}.npz"
        try:
            with np.load(path) as z:
                feats = z["features"]
        except FileNotFoundError:
            sys.exit(f"error: no pretext features at {path}; run experiments.main first")
        key = jax.random.key(seed)
        label = f"pretext (width {cfg.width:g})"
        if (cfg.pretext, cfg.feature_layer) != ("rotation", "final"):
            label = f"pretext {cfg.pretext}, {cfg.feature_layer} (width {cfg.width:g})"
        for name, x in (
            (label, feats),
            ("raw pixels", pixels),
            ("raw pixels, 8x8 average-pooled", pooled),
        ):
            r = describe(key, x, labels, num_classes)
            rows.append(
                f"| {name} | {seed} | {100 * r['knn']:.1f}% | {100 * r['purity']:.1f}% "
                f"| {r['nmi']:.3f} "
                f"| {100 * r['first_tenth_largest_class']:.1f}% "
                f"| {100 * r['last_tenth_largest_class']:.1f}% |"
            )
    print(
        f"Pool of {labels.size} images, {num_classes} classes (chance purity "
        f"{100 * np.bincount(labels).max() / labels.size:.1f}%).\n"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    app.run(main)
