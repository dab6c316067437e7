"""The networks of a labeling project (pretext network, classifier), saved with orbax.

    save_model(path, classifier, meta={"classes": [...], ...})
    classifier, meta = load_model(path)
    predict_folder(path, "new_images/", out="preds.csv")    # path,label,confidence

A saved model is a folder with `checkpoint/` (orbax, the whole `nnx.state`) and `model.json`
(what is needed to rebuild and use the network: classes, width, channels, image size,
normalisation; for a pretext network, which one: `bal_jax.features.pretext_network`).
`model.json` is written last, so a folder without it is incomplete.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from bal_jax import heads, train
from bal_jax.atomic import atomic_dir, write_text
from bal_jax.data import decode
from bal_jax.features import NETWORK_PRETEXTS, pretext_network
from bal_jax.keys import named_key
from bal_jax.labeling import pool as pool_lib
from bal_jax.labeling.config import LabelingError
from bal_jax.models import VGG16
from bal_jax.settings import TrainSettings
from bal_jax.settings import fit_kwargs as _runner_fit_kwargs

__all__ = [
    "cross_validate",
    "fit_kwargs",
    "load_model",
    "predict_folder",
    "read_meta",
    "save_model",
]

_META = "model.json"
_HEAD = "head.npz"


def fit_kwargs(settings: TrainSettings, mean: Sequence[float], std: Sequence[float]) -> dict:
    """`train.fit` / `train.fit_rotation` keyword arguments of one training stage.

    The runner's own helper, so a project trains exactly as `run_cycles` does.
    """
    return _runner_fit_kwargs(settings, mean, std, None)


# What a saved model folder may hold (a VGG checkpoint, or a linear head with the feature
# transform it needs).
_SAVED = (_META, f"{_META}.tmp", "checkpoint", _HEAD, "patches.npz", "pretext")


def _check_replaceable(path: str) -> None:
    if os.path.lexists(path):
        names = os.listdir(path) if os.path.isdir(path) else None
        # A saved model, possibly one left half done by an earlier version of this function.
        ours = names is not None and all(n in _SAVED or ".orbax-checkpoint-tmp" in n for n in names)
        if not ours:
            raise LabelingError(
                f"{path} exists and is not a saved model, so it is not replaced; choose "
                "another folder"
            )


def save_head(
    path: str, head: heads.LinearHead, *, meta: dict, extra: Callable | None = None
) -> None:
    """Saves a linear head (`head.npz`) and its `meta` atomically, as `save_model` does;
    `extra(tmp_folder)` may add files (the feature transform of an export) and edit `meta`
    before it is written."""
    _check_replaceable(path)
    with atomic_dir(path) as tmp:
        np.savez(os.path.join(tmp, _HEAD), **head.arrays())
        if extra is not None:
            extra(tmp)
        with open(os.path.join(tmp, _META), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)


def load_head(path: str) -> heads.LinearHead:
    read_meta(path, required=True)
    head_path = os.path.join(path, _HEAD)
    if not os.path.isfile(head_path):
        raise LabelingError(f"{path} has {_META} but no {_HEAD}; export the model again")
    with np.load(head_path, allow_pickle=False) as z:
        return heads.LinearHead.from_arrays(z)


def save_model(path: str, model: VGG16, *, meta: dict) -> None:
    """Saves `model` and its `meta` (JSON) to the folder `path`, replacing a saved model there.

    The model is written into a temporary folder beside `path` and renamed into place once
    complete, so a kill leaves the earlier model (or none), never a half-written one.

    Raises:
      LabelingError: `path` exists and is not a saved model (it is left alone).
    """
    _check_replaceable(path)
    with atomic_dir(path) as tmp:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(os.path.join(tmp, "checkpoint"), nnx.state(model))
            ckptr.wait_until_finished()
        with open(os.path.join(tmp, _META), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)


def read_meta(path: str, *, required: bool = False) -> dict | None:
    """The `meta` of a complete saved model, or None if `path` holds none.

    Args:
      path: a folder written by `save_model`.
      required: raise instead of returning None.

    Raises:
      LabelingError: with `required`, one sentence on what `path` is instead: missing, an
        export that did not finish, damaged, or not a saved model.
    """
    meta_path = os.path.join(path, _META)
    if os.path.isfile(meta_path):
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            if isinstance(meta, dict):
                return meta
        except (OSError, ValueError):
            pass
        if required:
            raise LabelingError(f"{meta_path} is damaged; export the model again")
        return None
    if not required:
        return None
    parent, name = os.path.split(os.path.abspath(path))
    if not os.path.exists(path):
        siblings = os.listdir(parent) if os.path.isdir(parent) else []
        if any(n.startswith(f".tmp-{name}-") for n in siblings):
            raise LabelingError(f"the export to {path} did not finish; run export again")
        raise LabelingError(f"{path} does not exist, so it holds no exported model")
    if not os.path.isdir(path):
        raise LabelingError(f"{path} is a file, not an exported model (a folder with {_META})")
    if any(n == "checkpoint" or ".orbax-checkpoint-tmp" in n for n in os.listdir(path)):
        raise LabelingError(
            f"the export to {path} did not finish (it has no {_META}); run export again"
        )
    raise LabelingError(f"{path} is not an exported model (it has no {_META})")


def load_model(path: str) -> tuple[VGG16, dict]:
    """Rebuilds a saved model from `meta` (`num_classes`, `channels`, `width`) and restores it.

    Returns:
      (model, meta).

    Raises:
      LabelingError: `path` holds no complete saved model (see `read_meta`).
    """
    meta = read_meta(path, required=True)
    checkpoint = os.path.join(os.path.abspath(path), "checkpoint")
    if not os.path.isdir(checkpoint):
        raise LabelingError(f"{path} has {_META} but no checkpoint/; export the model again")
    if meta.get("pretext") in NETWORK_PRETEXTS:  # a project's rotation or SimCLR network
        net = pretext_network(
            meta["pretext"], in_channels=meta["channels"], width=meta["width"], rngs=nnx.Rngs(0)
        )
    else:
        net = VGG16(
            meta["num_classes"],
            in_channels=meta["channels"],
            width=meta["width"],
            rngs=nnx.Rngs(0),
        )
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.state(net))
    with ocp.StandardCheckpointer() as ckptr:
        state = ckptr.restore(checkpoint, abstract)
    nnx.update(net, state)
    return net, meta


def remove_model(path: str) -> None:
    """Deletes a saved model folder (ignores a missing one)."""
    shutil.rmtree(path, ignore_errors=True)


def cross_validate(
    key: jax.Array,
    images_NHWC: np.ndarray,
    labels_N: np.ndarray,
    *,
    num_classes: int,
    width: float,
    folds: int,
    settings: TrainSettings,
    mean: Sequence[float],
    std: Sequence[float],
) -> dict:
    """K-fold accuracy of the classifier recipe: a fresh model per fold, tested on the rest.

    Args:
      key: the project's key; each fold draws `named_key(key, "cv_init<f>")` and
        `"cv_train<f>"`.
      images_NHWC, labels_N: the labeled images, N >= 2 * folds.
      num_classes, width: the classifier's shape.
      folds: number of folds (a seeded permutation, every f-th image held out).
      settings: the main task's optimisation settings.
      mean, std: per-channel normalisation.

    Returns:
      {'folds', 'accuracies' (per fold), 'mean', 'num_labels'}.
    """
    n = labels_N.shape[0]
    perm = np.asarray(jax.random.permutation(named_key(key, "cv_split"), n))
    ev = dict(
        batch_size=settings.eval_batch_size,
        mean=mean,
        std=std,
        tta_flip=settings.recipe.tta_flip,
    )
    accs = []
    for f in range(folds):
        held = np.sort(perm[f::folds])
        fit_on = np.setdiff1d(np.arange(n), held)
        net = VGG16(
            num_classes, in_channels=3, width=width, rngs=nnx.Rngs(named_key(key, f"cv_init{f}"))
        )
        train.fit(
            named_key(key, f"cv_train{f}"),
            net,
            images_NHWC[fit_on],
            labels_N[fit_on],
            **fit_kwargs(settings, mean, std),
            recipe=settings.recipe,
        )
        accs.append(float(train.evaluate(net, images_NHWC[held], labels_N[held], **ev)))
    return {"folds": folds, "accuracies": accs, "mean": float(np.mean(accs)), "num_labels": n}


def predict_folder(
    model_dir: str,
    images: str,
    *,
    out: str,
    batch_size: int = 512,
    features_file: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Labels every image below `images` with a saved classifier; writes path,label,confidence.

    Where an image lies in a top-level folder named after one of the model's classes, that
    folder is taken as its true label and the accuracy over those images is reported.

    Args:
      model_dir: a folder written by `save_model` (e.g. by the `export` command).
      images: folder of images, any depth.
      out: the CSV to write.
      batch_size: images per forward pass.
      features_file: embeddings of the images (a model exported from a project on the
        user's own embeddings needs them; `bal_jax.embeddings`).
      log: one line per step.

    Returns:
      {'num_images', 'unreadable', 'accuracy' (or None), 'num_with_truth', 'out'}.
    """
    read_meta(model_dir, required=True)  # one sentence on what the folder is instead
    if not os.path.isdir(images):
        raise LabelingError(f"images folder {images} does not exist")
    ids = list(pool_lib.scan_folder(images))
    if not ids:
        raise LabelingError(f"images folder {images} holds no images")
    meta = read_meta(model_dir)
    decoded, errors = decode.decode_images(
        [os.path.join(images, i) for i in ids], image_size=meta["image_size"], channels=3
    )
    bad = [(i, e) for i, e in zip(ids, errors, strict=True) if e is not None]
    if bad:
        log(f"skipped {len(bad)} unreadable image(s): " + ", ".join(i for i, _ in bad[:10]))
    ok = [n for n, e in enumerate(errors) if e is None]
    ids = [ids[n] for n in ok]
    batch = np.stack([decoded[n] for n in ok])
    if meta.get("kind") == "linear":
        from bal_jax.labeling.featurize import FeatureTransform  # imports this module

        feats = FeatureTransform(meta["features"], model_dir)(
            batch, ids, meta=meta, features_file=features_file, root=images
        )
        probs = load_head(model_dir).probs(*heads.split_views(feats))
        logits = np.log(np.maximum(probs, 1e-12))
    else:
        logits = train.predict(
            load_model(model_dir)[0],
            batch,
            batch_size=batch_size,
            mean=meta["mean"],
            std=meta["std"],
            tta_flip=bool(meta.get("tta_flip", False)),
        ).logits_NC
    probs = np.asarray(jax.nn.softmax(np.asarray(logits, np.float32), axis=-1))
    classes = meta["classes"]
    pred = probs.argmax(axis=1)
    lines = ["path,label,confidence"]
    lines += [
        f"{_csv_field(i)},{_csv_field(classes[p])},{c:.4f}"
        for i, p, c in zip(ids, pred, probs.max(axis=1), strict=True)
    ]
    write_text(out, "\n".join(lines) + "\n")
    truth = [i.split("/", 1)[0] if "/" in i else None for i in ids]
    has = [n for n, t in enumerate(truth) if t in classes]
    acc = None
    if has:
        acc = float(np.mean([classes[pred[n]] == truth[n] for n in has]))
    return {
        "num_images": len(ids),
        "unreadable": len(bad),
        "accuracy": acc,
        "num_with_truth": len(has),
        "out": out,
    }


def _csv_field(s: str) -> str:
    return '"' + s.replace('"', '""') + '"' if any(ch in s for ch in ',"\n') else s
