r"""How good are the pretext features BAL clusters? A check that needs no training.

    python -m experiments.diagnose --config=cifar10_cpu --seeds=0,1,2

For each seed, reads the cached pretext features of the run's settings (the runner's
`--pretext_dir`, default `pretext/` beside `--workdir`) and clusters them, and the raw pixels as a
reference, with BAL's own K-means (K = the number of classes). It prints how well the
clusters match the true classes (purity, normalised mutual information) and how the classes
spread along BAL's CDD order: the share of the most frequent class in the first and last
tenth of the order (the first sub-pools BAL draws from are at the start). The labels are
used here for diagnosis only; BAL never sees them.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
from absl import app, flags, logging

from bal_jax.kmeans import cdd_order, kmeans
from experiments import main as runner
from experiments.pipeline import ConfigError, default_pretext_dir, load_data, pretext_cache_dir


def purity(labels_N: np.ndarray, clusters_N: np.ndarray) -> float:
    """Share of points whose cluster's majority class is their class."""
    table = _contingency(labels_N, clusters_N)
    return float(table.max(axis=0).sum() / labels_N.size)


def nmi(labels_N: np.ndarray, clusters_N: np.ndarray) -> float:
    """Normalised mutual information, arithmetic normalisation (scikit-learn's default)."""
    p = _contingency(labels_N, clusters_N) / labels_N.size
    py, pc = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float(np.sum(p[nz] * np.log(p[nz] / np.outer(py, pc)[nz])))
    h = [-float(np.sum(q[q > 0] * np.log(q[q > 0]))) for q in (py, pc)]
    return 1.0 if sum(h) == 0 else mi / (0.5 * sum(h))


def _contingency(labels_N, clusters_N) -> np.ndarray:
    labels_N, clusters_N = np.asarray(labels_N), np.asarray(clusters_N)
    if labels_N.shape != clusters_N.shape or labels_N.ndim != 1 or labels_N.size == 0:
        raise ValueError("labels and clusters must be non-empty 1-D arrays of one length")
    _, y = np.unique(labels_N, return_inverse=True)
    _, c = np.unique(clusters_N, return_inverse=True)
    table = np.zeros((y.max() + 1, c.max() + 1))
    np.add.at(table, (y, c), 1)
    return table


def describe(key, feats_ND: np.ndarray, labels_N: np.ndarray, num_classes: int) -> dict:
    """Purity, NMI and the class shares at both ends of the CDD order, for one feature set."""
    result = kmeans(key, feats_ND, num_classes)
    clusters = np.asarray(result.assignments)
    order = np.asarray(cdd_order(feats_ND, result.centers))
    tenth = max(1, labels_N.size // 10)

    def largest_share(idx):
        return float(np.bincount(labels_N[idx], minlength=num_classes).max() / idx.size)

    return {
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
    rows = [
        "| features | seed | K-means purity | NMI | largest class in first 10% of CDD order "
        "| ... in last 10% |",
        "|---|---|---|---|---|---|",
    ]
    for seed in cfg.seeds:
        path = f"{cache}/seed{seed}.npz"
        try:
            with np.load(path) as z:
                feats = z["features"]
        except FileNotFoundError:
            sys.exit(f"error: no pretext features at {path}; run experiments.main first")
        key = jax.random.key(seed)
        for name, x in ((f"pretext (width {cfg.width:g})", feats), ("raw pixels", pixels)):
            r = describe(key, x, labels, num_classes)
            rows.append(
                f"| {name} | {seed} | {100 * r['purity']:.1f}% | {r['nmi']:.3f} "
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
