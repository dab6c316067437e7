"""A labeling project's classifier per round: fitted on every label so far, saved, reused.

    head, meta = round_head(project, upto)          # features: the linear head (default)
    net = round_network(project, upto)              # or the VGG16 (the paper's setting)
    preds = round_predictions(project, upto)        # what the uncertainty samplers see
    cross_validate(project)                         # status's k-fold accuracy

Round `upto` is picked by the classifier the runner has after cycle `upto - 1`: the same keys
(`bal_jax.keys.main_train_key`) and the same classifier step (`bal_jax.learners`), so a project
and `run_cycles` make the same picks. Each is saved under models/round_NN with a digest of
the labels it saw, and reused while the labels do not change.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
from flax import nnx

from bal_jax import heads, train
from bal_jax.keys import main_train_key, named_key
from bal_jax.labeling import models
from bal_jax.labeling.config import LabelingError
from bal_jax.labeling.store import read_json, write_json
from bal_jax.learners import fit_linear_step, linear_predictions, network_predictions
from bal_jax.methods import PoolPredictions
from bal_jax.models import VGG16

__all__ = ["cross_validate", "round_head", "round_network", "round_predictions"]


def _labels(project, *, required: bool = True) -> tuple[np.ndarray, np.ndarray, str]:
    """(labeled pool indices, their classes, a digest of ids, classes and class names)."""
    idx, y = project._labeled_pool()
    if required and idx.size == 0:
        raise LabelingError("no image of the pool is labeled yet; import labels first")
    digest = hashlib.sha256(
        json.dumps([project.pool.ids_N[idx].tolist(), y.tolist(), project.classes]).encode()
    ).hexdigest()[:16]
    return idx, y, digest


def _saved(project, upto: int, digest: str, kind: str) -> tuple[str, dict | None]:
    """Round `upto`'s model folder, and its meta when it holds a `kind` model of these labels."""
    path = project._path("models", f"round_{upto:02d}")
    meta = models.read_meta(path)
    fresh = meta is not None and meta.get("labels_digest") == digest
    return path, meta if fresh and meta.get("kind", "vgg") == kind else None


def _meta(project, kind: str, upto: int, idx: np.ndarray, digest: str, **extra) -> dict:
    return {
        "kind": kind,
        "classes": project.classes,
        "image_size": project.config.image_size,
        "mean": list(project.mean),
        "std": list(project.std),
        "labels_digest": digest,
        "num_labels": int(idx.size),
        "round": upto,
        "project_id": project.state["project_id"],
        **extra,
    }


def round_head(project, upto: int) -> tuple[heads.LinearHead, dict]:
    """The linear head that picks round `upto`, fitted on every label so far (its L2 chosen by
    `cv_folds`-fold cross-validation on those labels). Returns (head, meta)."""
    idx, y, digest = _labels(project)
    path, meta = _saved(project, upto, digest, "linear")
    if meta is not None:
        return models.load_head(path), meta
    t0 = time.perf_counter()
    # The runner's LinearLearner fits cycle upto - 1 with this key and this function.
    head, cv = fit_linear_step(
        named_key(main_train_key(project.key, upto - 1), "head"),
        project.head_features,
        idx,
        y,
        num_classes=len(project.classes),
        folds=project.config.cv_folds,
    )
    meta = _meta(
        project,
        "linear",
        upto,
        idx,
        digest,
        feature_dim=int(head.mean_D.shape[0]),
        l2=head.l2,
        cv=None if cv is None else cv._asdict(),
    )
    project.log(
        f"fitted the linear head on {idx.size} labels in {time.perf_counter() - t0:.1f}s "
        f"(L2 {head.l2:g}"
        + ("" if cv is None else f", {cv.folds}-fold CV accuracy {100 * cv.accuracy:.1f}%")
        + ")"
    )
    models.save_head(path, head, meta=meta)
    return head, meta


def round_network(project, upto: int) -> VGG16:
    """The VGG16 that picks round `upto`, trained on every label of the pool so far.

    It is trained as the runner trains it in cycle `upto - 1`: warm-started from the model of
    round `upto - 1` (fresh for round 1, or when classes were added), fresh optimizer and
    schedule, that cycle's key.
    """
    idx, y, digest = _labels(project)
    c, classes = project.config, project.classes
    path, meta = _saved(project, upto, digest, "vgg")
    if meta is not None:
        return models.load_model(path)[0]
    prev_path = project._path("models", f"round_{upto - 1:02d}")
    prev = models.read_meta(prev_path) if upto > 1 else None
    if prev is not None and prev["num_classes"] == len(classes):
        net, how = models.load_model(prev_path)[0], f"warm start from round {upto - 1}'s model"
    else:
        init = nnx.Rngs(named_key(project.key, "main_init"))
        net, how = VGG16(len(classes), in_channels=3, width=c.width, rngs=init), "fresh"
    project.log(f"training the classifier on {idx.size} labels ({how})")
    t0 = time.perf_counter()
    train.fit(
        main_train_key(project.key, upto - 1),
        net,
        project.pool.images_NHWC[idx],
        y,
        **models.fit_kwargs(c.main, project.mean, project.std),
        recipe=c.main.recipe,
    )
    project.log(f"trained in {time.perf_counter() - t0:.1f}s")
    extra = dict(num_classes=len(classes), channels=3, width=c.width)
    meta = _meta(project, "vgg", upto, idx, digest, **extra, tta_flip=bool(c.main.recipe.tta_flip))
    models.save_model(path, net, meta=meta)
    return net


def round_predictions(project, upto: int) -> PoolPredictions:
    """Round `upto`'s classifier on the whole pool (what the uncertainty samplers use)."""
    if project.config.classifier == "linear":
        head = round_head(project, upto)[0]
        return linear_predictions(head, project.head_features)
    main = project.config.main
    return network_predictions(
        round_network(project, upto),
        project.pool.images_NHWC,
        batch_size=main.eval_batch_size,
        mean=project.mean,
        std=project.std,
        tta_flip=main.recipe.tta_flip,
    )


def cross_validate(project) -> dict | None:
    """K-fold accuracy of the project's classifier on the labels so far (cached per labels).

    Returns:
      {'folds', 'accuracies', 'mean', 'num_labels'} (+ 'l2' for the linear head), or None with
      fewer than 2 labels per fold.
    """
    idx, y, digest = _labels(project, required=False)
    folds = project.config.cv_folds
    if idx.size < 2 * folds:
        return None
    if project.config.classifier == "linear":
        # The folds that chose the head's L2 (so slightly optimistic at the chosen value).
        cv = round_head(project, max(len(project.rounds()), 1))[1]["cv"]
        return {
            "folds": cv["folds"],
            "accuracies": None,
            "mean": cv["accuracy"],
            "num_labels": int(idx.size),
            "l2": cv["l2"],
        }
    path = project._path("cv.json")
    if os.path.exists(path) and (cached := read_json(path)).get("digest") == digest:
        return cached
    result = models.cross_validate(
        project.key,
        project.pool.images_NHWC[idx],
        y,
        num_classes=len(project.classes),
        width=project.config.width,
        folds=folds,
        settings=project.config.main,
        mean=project.mean,
        std=project.std,
    )
    result["digest"] = digest
    write_json(path, result)
    return result
