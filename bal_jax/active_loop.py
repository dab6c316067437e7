"""The active-learning loop (SPEC Steps 1-6) as library code: no flags, explicit arguments.

Usage::

    outs = pretext_outputs(key, pool.images, model=ModelSpec(4, 3, 0.25), settings=pretext_cfg,
                           mean=ds.mean, std=ds.std)
    order = bal_order(key, outs.features_ND, num_clusters=10)
    records = run_cycles(key, method="bal", pool=pool, evaluation=test, counts=(100,) * 5,
                         context=SelectionContext(bal_order=order, beta=1.0), ...)

`run_cycles` checkpoints after every cycle when given a `RunCheckpointer`, and resumes from
the latest checkpoint: every random draw is derived from (key, method, cycle), so a resumed
run reproduces an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx

from bal_jax import patch_features, train
from bal_jax.checkpoint import ModelStore, RunCheckpointer
from bal_jax.keys import cycle_key, named_key, selection_key
from bal_jax.learners import HeadFeatures, LinearLearner, VGGLearner
from bal_jax.methods import (
    BALOptions,
    PoolPredictions,
    SelectionContext,
    bal_min_beta,
    needs_beta,
    select,
)
from bal_jax.models import VGG16

# Version of what `pretext_outputs` computes: part of the runner's pretext cache key, so
# features made by older code are never reused. Bump it with any change to the rotation
# training, the network or the feature extraction that changes the features.
PRETEXT_CODE_VERSION = 2
# Feature views (SPEC Step 2): the upright image (paper) or one random rotation (released code).
FEATURE_VIEWS = ("upright", "random_rotation")
# Augmentation modes (SPEC Step 1; per dataset in experiments/config.py): random crop (pad 4)
# with a horizontal flip, the crop alone (digits must not be mirrored), or none.
AUGMENTATIONS = ("crop_flip", "crop", "none")

# A trained model that puts more than this share of the validation images into one class has
# collapsed (a constant predictor scores chance): a failure to report, not a result.
COLLAPSE_SHARE = 0.8


class Split(NamedTuple):
    """Images (N, H, W, C) uint8 with labels (N,) int."""

    images: np.ndarray
    labels: np.ndarray


class ModelSpec(NamedTuple):
    num_classes: int
    in_channels: int
    width: float


class TrainSettings(NamedTuple):
    """Optimisation settings of one training stage (SPEC Step 1 / Step 6, paper Table I)."""

    epochs: int
    batch_size: int
    learning_rate: float
    milestones: tuple[int, ...] = ()
    lr_decay: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: str = "crop_flip"  # one of AUGMENTATIONS
    eval_batch_size: int = 512
    recipe: train.Recipe = train.RECIPES["paper"]
    # Compute dtype ('float32' or 'bfloat16' mixed precision, bal_jax.precision) and optimizer
    # steps per jitted call (>1 only on accelerators; see bal_jax.train.fit).
    dtype: str = "float32"
    steps_per_dispatch: int = 1


class PretextOutputs(NamedTuple):
    features_ND: np.ndarray
    losses_N: np.ndarray  # rotation losses (PT4AL); NaN for pretexts without them
    seconds: dict[str, float]  # {"pretext": training, "features": features + losses}
    probe_features_MD: np.ndarray | None = None  # features of `probe_images`, if given


# Pretext tasks of `pretext_outputs`: the paper's rotation prediction (SPEC Step 1), SimCLR
# instance discrimination and k-means patch features without a network (issue 11).
PRETEXTS = ("rotation", "simclr", "patches")


def augment_kwargs(mode: str) -> dict[str, Any]:
    """The arguments of `train.fit` / `train.fit_rotation` for an augmentation mode.

    Args:
      mode: one of `AUGMENTATIONS`.

    Returns:
      ``{"augment": bool}``, plus ``{"flip": False}`` for "crop".
    """
    if mode not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {mode!r}")
    if mode == "crop":
        return {"augment": True, "flip": False}
    return {"augment": mode != "none"}


def rotate_each(images_NHWC: np.ndarray, quarter_turns_N: np.ndarray) -> np.ndarray:
    """Image i turned by ``quarter_turns_N[i]`` x 90 degrees, as `train.rotations` turns it.

    Args:
      images_NHWC: square images.
      quarter_turns_N: (N,) ints in [0, 4).

    Returns:
      The rotated images, same shape and dtype.
    """
    out = np.empty_like(images_NHWC)
    for k in range(4):
        sel = quarter_turns_N == k
        out[sel] = np.rot90(images_NHWC[sel], k, axes=(1, 2))
    return out


def collapse_share(logits_NC: np.ndarray) -> float:
    """Share of the images predicted as the most frequent predicted class (1.0 = constant)."""
    pred = np.argmax(np.asarray(logits_NC), axis=-1)
    return float(np.bincount(pred).max() / max(pred.size, 1))


def fit_kwargs(settings: TrainSettings, mean, std, mesh) -> dict[str, Any]:
    """`train.fit` / `train.fit_rotation` keyword arguments of one training stage."""
    return dict(
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        milestones=tuple(settings.milestones),
        lr_decay=settings.lr_decay,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        mean=mean,
        std=std,
        mesh=mesh,
        **augment_kwargs(settings.augment),
        dtype=settings.dtype,
        steps_per_dispatch=settings.steps_per_dispatch,
    )


def pretext_outputs(
    key: jax.Array,
    images: np.ndarray,
    *,
    model: ModelSpec,
    settings: TrainSettings,
    mean: Sequence[float],
    std: Sequence[float],
    mesh=None,
    progress: Callable | None = None,
    feature_view: str = "upright",
    pretext: str = "rotation",
    feature_layer: str = "final",
    probe_images: np.ndarray | None = None,
) -> PretextOutputs:
    """SPEC Steps 1-2 inputs: trains the pretext network, returns pool features and losses.

    Args:
      key: PRNG key of the pretext network's initialisation and training.
      images: (N, H, W, C) uint8 pool (no labels are used).
      model: the backbone's shape (``num_classes`` is ignored: the pretext has its own head).
      settings: the pretext's optimisation settings (for 'simclr': epochs, batch size and
        the Adam learning rate; milestones are not used, the schedule is warm-up + cosine).
      mean, std: per-channel normalisation.
      mesh: optional device mesh.
      progress: ``callable(epoch, metrics)`` per epoch.
      pretext: 'rotation' (the paper's, SPEC Step 1), 'simclr' (``fit_contrastive``) or
        'patches' (``bal_jax.patch_features``: no network; `model`, `settings` and
        `feature_layer` other than 'final' do not apply).
      feature_layer: 'final' (the paper's penultimate features, of the upright image) or a
        global-average-pooled block ('block1'..'block5', ``VGG16.layer_features``).
      probe_images: optional (M, H, W, C) uint8 images (the validation split) whose features
        are returned too, for the feature-quality diagnostic.
      feature_view: one of `FEATURE_VIEWS`: 'upright' (the paper's) or 'random_rotation' (the
        released code: each pool image turned by a random multiple of 90 degrees, drawn from
        `key`).

    Returns:
      ``PretextOutputs``: pool features, per-image rotation losses (what PT4AL sorts by; NaN
      for 'simclr' and 'patches', which have none), timings, probe features.
    """
    if feature_view not in FEATURE_VIEWS:
        raise ValueError(f"feature_view must be one of {FEATURE_VIEWS}, got {feature_view!r}")
    if pretext not in PRETEXTS:
        raise ValueError(f"unknown pretext {pretext!r}; choose one of {PRETEXTS}")
    if pretext == "patches":
        return _patch_outputs(key, images, probe_images)
    init = nnx.Rngs(named_key(key, "init"))
    t0 = time.perf_counter()
    if pretext == "rotation":
        net = VGG16(4, in_channels=model.in_channels, width=model.width, rngs=init)
        train.fit_rotation(
            named_key(key, "train"),
            net,
            images,
            **fit_kwargs(settings, mean, std, mesh),
            progress=progress,
        )
    else:
        net = train.ContrastiveNet(in_channels=model.in_channels, width=model.width, rngs=init)
        train.fit_contrastive(
            named_key(key, "train"),
            net,
            images,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            mean=mean,
            std=std,
            mesh=mesh,
            progress=progress,
        )
    t1 = time.perf_counter()
    ev = dict(
        batch_size=settings.eval_batch_size, mean=mean, std=std, mesh=mesh, dtype=settings.dtype
    )
    views = images
    if feature_view == "random_rotation":
        turns = jax.random.randint(named_key(key, "feature_view"), (images.shape[0],), 0, 4)
        views = rotate_each(np.asarray(images), np.asarray(turns))
    features = np.asarray(train.predict_features(net, views, layer=feature_layer, **ev))
    probe = None
    if probe_images is not None:
        probe = np.asarray(train.predict_features(net, probe_images, layer=feature_layer, **ev))
    if pretext == "rotation":
        losses = np.asarray(train.rotation_losses(net, images, **ev))
    else:
        losses = np.full((images.shape[0],), np.nan, np.float32)
    seconds = {"pretext": t1 - t0, "features": time.perf_counter() - t1}
    return PretextOutputs(features, losses, seconds, probe)


def _patch_outputs(key, images, probe_images) -> PretextOutputs:
    t0 = time.perf_counter()
    transform = patch_features.fit_patch_features(named_key(key, "patches"), np.asarray(images))
    t1 = time.perf_counter()
    features = patch_features.patch_features(transform, np.asarray(images))
    probe = None
    if probe_images is not None:
        probe = patch_features.patch_features(transform, np.asarray(probe_images))
    losses = np.full((features.shape[0],), np.nan, np.float32)
    return PretextOutputs(
        features, losses, {"pretext": t1 - t0, "features": time.perf_counter() - t1}, probe
    )


def run_cycles(
    key: jax.Array,
    *,
    method: str,
    pool: Split,
    evaluation: Split,
    counts: Sequence[int],
    context: SelectionContext,
    model: ModelSpec,
    settings: TrainSettings,
    mean: Sequence[float],
    std: Sequence[float],
    warm_start: bool = True,
    validation: Split | None = None,
    checkpointer: RunCheckpointer | None = None,
    model_store: ModelStore | None = None,
    on_cycle: Callable[[dict], None] | None = None,
    stop_after: int | None = None,
    mesh=None,
    log: Callable[[str], None] = print,
    head_features: HeadFeatures | None = None,
) -> list[dict]:
    """Runs the cycles of one method for one seed (SPEC Steps 3-6).

    Each cycle: the classifier of the previous cycle predicts the pool, `select` picks the
    cycle's images, the classifier is fitted on every label so far and scored.

    Args:
      key: the seed's key. Cold-start methods share the cycle-0 random set drawn from it;
        the main model's initial weights are shared by all methods of a seed.
      method: one of `bal_jax.methods.METHODS`.
      pool: the unlabeled pool with its (hidden) labels, revealed as images are selected.
      evaluation: the split whose accuracy is recorded each cycle (the test split).
      counts: images to label per cycle, k_c.
      context: orders, pretext features and beta computed once per seed.
      model: the main network's shape.
      settings: the main task's optimisation settings.
      mean, std: per-channel normalisation.
      warm_start: keep the previous cycle's weights (small/medium budgets) or re-initialise
        every cycle (large budget), each time with a fresh optimizer and schedule.
      validation: optional held-out split, accuracy recorded as `val_accuracy`.
      checkpointer: saves after every cycle and resumes from the latest step.
      model_store: trained models keyed by lineage (initial weights, training keys, recipe
        and labeled sets): a training that another method or beta candidate of this seed
        already ran is restored instead of repeated, so methods that share a labeled set share
        its model and its accuracy. The training key of cycle c depends only on (key, c).
      on_cycle: called with each new record (after it is checkpointed).
      stop_after: run only the first cycles (the beta search); sub-pools are still cut for
        all `len(counts)` cycles.
      mesh: device mesh for data parallelism (None = all devices).
      log: one line per phase.
      head_features: classify with a linear head on these fixed features
        (`bal_jax.learners.LinearLearner`, `--classifier=linear`) instead of training the
        VGG16 (`model`, `settings`, `warm_start` and `model_store` then do not apply).

    Returns:
      One record per cycle: labeled count and fraction, accuracies, selected pool indices,
      seconds per phase, `collapsed` (the model predicts one class for more than
      COLLAPSE_SHARE of the validation images, or of the evaluation images without a
      validation split; its accuracy is then a failure, not a result) with `majority_share`,
      and `shared_model` (restored from `model_store`). The reported model is the one after
      the last training step (no model selection on any split).
    """
    pool_size = pool.images.shape[0]
    num_cycles = len(counts)
    _check_budget(method, counts, pool_size, context)
    if head_features is not None:
        learner = LinearLearner(
            key, head_features, pool_labels=pool.labels, num_classes=model.num_classes
        )
    else:
        learner = VGGLearner(
            key,
            method=method,
            pool=pool,
            splits={"evaluation": evaluation, "validation": validation},
            model=model,
            settings=settings,
            mean=mean,
            std=std,
            warm_start=warm_start,
            model_store=model_store,
            mesh=mesh,
            fit_kwargs=fit_kwargs(settings, mean, std, mesh),
        )
    label_cycle = np.full(pool_size, -1, np.int32)
    records: list[dict] = []
    start = 0
    if checkpointer is not None:
        restored = checkpointer.restore(learner.state())
        if restored is not None:
            learner.load_state(restored.state)
            label_cycle = restored.label_cycle.astype(np.int32)
            records = list(restored.meta["records"])
            start = restored.step
            learner.digest = records[-1].get("model_digest") if records else None
            log(f"[{method}] resumed after cycle {start} of {num_cycles}")

    for cycle in range(start, num_cycles if stop_after is None else stop_after):
        times: dict[str, float] = {}
        labeled_mask = label_cycle >= 0
        t0 = time.perf_counter()
        preds = PoolPredictions()
        if cycle > 0:
            preds = learner.predictions(method, named_key(cycle_key(key, method, cycle), "predict"))
        times["predict"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        k = int(counts[cycle])
        picked = np.asarray(
            select(
                method,
                selection_key(key, method, cycle),
                cycle=cycle,
                num_cycles=num_cycles,
                k=k,
                labeled_mask=labeled_mask,
                context=context,
                preds=preds,
            ),
            np.int64,
        )
        times["selection"] = time.perf_counter() - t0
        _check_selection(picked, labeled_mask, k, method, cycle)
        label_cycle[picked] = cycle
        labeled = np.flatnonzero(label_cycle >= 0)
        t0 = time.perf_counter()
        fitted = learner.fit(cycle, labeled)
        times["training"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        record = _score(learner, evaluation, validation)
        times["evaluation"] = time.perf_counter() - t0
        record = {
            "method": method,
            "cycle": cycle,
            "num_labeled": int(labeled.size),
            "fraction": labeled.size / pool_size,
            **record,
            "selected": picked.tolist(),
            **fitted,
            "seconds": {k: round(v, 3) for k, v in times.items()},
        }
        records.append(record)
        if checkpointer is not None:
            checkpointer.save(
                cycle + 1, state=learner.state(), label_cycle=label_cycle, meta={"records": records}
            )
        _log_cycle(log, record, num_cycles, times, pool_size, validation is not None)
        if on_cycle is not None:
            on_cycle(record)
    return records


def _check_budget(method, counts, pool_size, context) -> None:
    if sum(counts) > pool_size:
        raise ValueError(f"the budget ({sum(counts)} images) exceeds the pool ({pool_size})")
    if needs_beta(
        method,
        counts,
        pool_size=pool_size,
        switch_fraction=context.switch_fraction,
        uniform_subpools=context.bal_options.uniform_subpools,
    ):
        lowest = bal_min_beta(counts, pool_size=pool_size, options=context.bal_options)
        if context.beta is None or context.beta < lowest:
            raise ValueError(f"beta={context.beta} is below its minimum {lowest:.4g} ((k-1)*C/N)")


def _score(learner, evaluation: Split, validation: Split | None) -> dict:
    """Test accuracy, validation accuracy and the collapse check of the cycle's model."""
    logits = learner.logits("evaluation")
    out = {"accuracy": float(np.mean(np.argmax(logits, -1) == np.asarray(evaluation.labels)))}
    if validation is not None:
        logits = learner.logits("validation")
        out["val_accuracy"] = float(np.mean(np.argmax(logits, -1) == np.asarray(validation.labels)))
    out["majority_share"] = collapse_share(logits)
    out["collapsed"] = out["majority_share"] > COLLAPSE_SHARE
    return out


def _log_cycle(log, record: dict, num_cycles: int, times: dict, pool_size: int, has_val: bool):
    method, n = record["method"], record["num_labeled"]
    trained = "shared model" if record["shared_model"] else f"train {times['training']:.1f}s"
    log(
        f"[{method}] cycle {record['cycle'] + 1}/{num_cycles}: {n} labeled "
        f"({100 * n / pool_size:.1f}%), accuracy {100 * record['accuracy']:.2f}% "
        f"({trained}, select {times['selection']:.2f}s)"
    )
    if record["collapsed"]:
        log(
            f"[{method}] cycle {record['cycle'] + 1}: COLLAPSED: the model predicts one class for "
            f"{100 * record['majority_share']:.0f}% of the "
            f"{'validation' if has_val else 'evaluation'} images; its "
            "accuracy is reported as a failure, not a result"
        )


def _check_selection(picked: np.ndarray, labeled_mask: np.ndarray, k: int, method: str, cycle: int):
    # A sampler bug must never silently lose or duplicate labels.
    if picked.shape != (k,) or np.unique(picked).size != k or labeled_mask[picked].any():
        raise RuntimeError(
            f"{method} returned an invalid selection in cycle {cycle}: expected {k} distinct "
            f"unlabeled indices, got {picked.size} ({np.unique(picked).size} distinct)"
        )


class BetaSearch(NamedTuple):
    beta: float
    scores: dict[float, float]
    seconds: float


def search_beta(
    key: jax.Array,
    *,
    candidates: Sequence[float],
    search_cycles: int,
    pool: Split,
    validation: Split,
    counts: Sequence[int],
    context: SelectionContext,
    model: ModelSpec,
    settings: TrainSettings,
    mean: Sequence[float],
    std: Sequence[float],
    warm_start: bool = True,
    model_store: ModelStore | None = None,
    done: dict[float, float] | None = None,
    on_score: Callable[[float, float], None] | None = None,
    mesh=None,
    log: Callable[[str], None] = print,
    method: str = "bal",
    head_features: HeadFeatures | None = None,
) -> BetaSearch:
    """Paper Eq. 9: beta* = argmax_beta validation accuracy after the early cycles.

    Each candidate runs BAL's first `search_cycles` cycles of the schedule (its sub-pools
    still cut for the full schedule) and is scored on the validation split, never on the
    test split. Candidates below beta_min are dropped. Ties go to the smaller beta.

    Args:
      model_store: shared trained models (see `run_cycles`): candidates whose first cycles
        label the same images train once.
      done: scores already measured (resuming a search); `on_score` is called per new one.
      method: the method whose sub-pools beta shapes ('bal' or its variant 'bal_typical').
      head_features: the linear head's features (see `run_cycles`); candidates are scored
        on `head_features.validation`.
    """
    pool_size = pool.images.shape[0]
    lowest = bal_min_beta(counts, pool_size=pool_size, options=context.bal_options)
    grid = sorted({float(b) for b in candidates if b >= lowest})
    if not grid:
        raise ValueError(f"no beta candidate reaches the minimum {lowest:.4g}; got {candidates}")
    if not 1 <= search_cycles <= len(counts):
        raise ValueError(f"search_cycles must be in [1, {len(counts)}], got {search_cycles}")
    scores = dict(done or {})
    t0 = time.perf_counter()
    for beta in grid:
        if beta in scores:
            continue
        records = run_cycles(
            key,
            method=method,
            pool=pool,
            evaluation=validation,
            counts=counts,
            context=context._replace(beta=beta),
            model=model,
            settings=settings,
            mean=mean,
            std=std,
            warm_start=warm_start,
            model_store=model_store,
            mesh=mesh,
            log=lambda s: None,
            stop_after=search_cycles,
            head_features=None
            if head_features is None
            else head_features._replace(evaluation=head_features.validation),
        )
        scores[beta] = records[-1]["accuracy"]
        log(f"[beta search] beta={beta:g}: validation accuracy {100 * scores[beta]:.2f}%")
        if on_score is not None:
            on_score(beta, scores[beta])
    best = max(grid, key=lambda b: (scores[b], -b))
    return BetaSearch(best, {b: scores[b] for b in grid}, time.perf_counter() - t0)


__all__ = [
    "AUGMENTATIONS",
    "FEATURE_VIEWS",
    "PRETEXTS",
    "PRETEXT_CODE_VERSION",
    "BALOptions",
    "BetaSearch",
    "ModelSpec",
    "PretextOutputs",
    "Split",
    "TrainSettings",
    "augment_kwargs",
    "fit_kwargs",
    "pretext_outputs",
    "rotate_each",
    "run_cycles",
    "search_beta",
]
