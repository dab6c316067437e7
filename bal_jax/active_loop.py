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

import hashlib
import json
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx

from bal_jax import parallel, patch_features, train
from bal_jax.checkpoint import ModelStore, RunCheckpointer
from bal_jax.methods import (
    HOT_START,
    NEEDS_FEATURES,
    NEEDS_MC_DROPOUT,
    NEEDS_PROBS,
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

# Dropout rate of the classifier for the MC-dropout (DBAL) baseline only.
DBAL_DROPOUT = 0.5
DBAL_SAMPLES = 10
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


def _settings_key(settings: TrainSettings) -> tuple:
    # The fields that decide a training's result, for model digests. `dtype` and
    # `steps_per_dispatch` are left out at their defaults so that digests of runs made before
    # they existed stay valid.
    fields = settings._asdict()
    if settings.dtype == "float32":
        del fields["dtype"]
    if settings.steps_per_dispatch == 1:
        del fields["steps_per_dispatch"]
    return tuple(fields.values())


class PretextOutputs(NamedTuple):
    features_ND: np.ndarray
    losses_N: np.ndarray  # rotation losses (PT4AL); NaN for pretexts without them
    seconds: dict[str, float]  # {"pretext": training, "features": features + losses}
    probe_features_MD: np.ndarray | None = None  # features of `probe_images`, if given


# Pretext tasks of `pretext_outputs`: the paper's rotation prediction (SPEC Step 1), SimCLR
# instance discrimination and k-means patch features without a network (issue 11).
PRETEXTS = ("rotation", "simclr", "patches")


def named_key(key: jax.Array, name: str) -> jax.Array:
    """A key for a named purpose, stable across processes (no Python hash randomisation)."""
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


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


def main_train_key(key: jax.Array, cycle: int) -> jax.Array:
    """The main model's training key in cycle `cycle`: a function of the seed's key and the
    cycle only, so every method (and the labeling tool) trains identical models on identical
    labeled sets."""
    return jax.random.fold_in(named_key(key, "main_train"), cycle)


def cycle_key(key: jax.Array, method: str, cycle: int) -> jax.Array:
    """The per-cycle key of `method` (its prediction and selection keys derive from it).

    ``bal_switch``'s typical cycles are TypiClust's own picks (the same keys), so the two
    share their trained models and differ only from the switch on.
    """
    return jax.random.fold_in(
        named_key(key, "typiclust" if method == "bal_switch" else method), cycle
    )


def selection_key(key: jax.Array, method: str, cycle: int) -> jax.Array:
    """The key `select` gets in cycle `cycle`: cold-start methods (not HOT_START) share one
    random first set per seed; the runner and the labeling tool both draw it here."""
    if cycle == 0 and method not in HOT_START:
        return named_key(key, "initial_set")
    return named_key(cycle_key(key, method, cycle), "select")


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


def _predict_pool(
    method, model, key, images, settings: TrainSettings, mean, std, mesh
) -> PoolPredictions:
    if method in NEEDS_MC_DROPOUT:
        mc = train.predict_mc_dropout(
            key,
            model,
            images,
            num_samples=DBAL_SAMPLES,
            batch_size=settings.eval_batch_size,
            mean=mean,
            std=std,
            mesh=mesh,
            dtype=settings.dtype,
        )
        return PoolPredictions(mc_probs_TNC=np.asarray(mc))
    if method not in NEEDS_PROBS | NEEDS_FEATURES and method != "bal":
        return PoolPredictions()
    out = train.predict(
        model,
        images,
        batch_size=settings.eval_batch_size,
        mean=mean,
        std=std,
        mesh=mesh,
        tta_flip=settings.recipe.tta_flip,
        dtype=settings.dtype,
    )
    logits = np.asarray(out.logits_NC, np.float32)
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    return PoolPredictions(
        probs_NC=probs, logits_NC=logits, features_ND=np.asarray(out.features_ND)
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
) -> list[dict]:
    """Runs the cycles of one method for one seed (SPEC Steps 3-6).

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
    spec_dropout = DBAL_DROPOUT if method in NEEDS_MC_DROPOUT else 0.0
    init_key = named_key(key, "main_init")
    ndev = mesh.devices.size if mesh is not None else jax.device_count()
    root_digest = lineage_root(
        init_key, (tuple(model), spec_dropout, warm_start), settings, mean, std, ndev
    )

    def fresh_model(cycle: int) -> VGG16:
        k = init_key if warm_start else jax.random.fold_in(init_key, cycle)
        net = VGG16(
            model.num_classes,
            in_channels=model.in_channels,
            width=model.width,
            dropout=spec_dropout,
            rngs=nnx.Rngs(k),
        )
        if mesh is not None:
            # Replicated on the mesh from the start: checkpoints of several processes save and
            # restore global arrays.
            nnx.update(net, parallel.replicate(nnx.state(net), mesh))
        return net

    net = fresh_model(0)
    label_cycle = np.full(pool_size, -1, np.int32)
    records: list[dict] = []
    start = 0
    digest = None
    if checkpointer is not None:
        restored = checkpointer.restore(nnx.state(net))
        if restored is not None:
            nnx.update(net, restored.state)
            label_cycle = restored.label_cycle.astype(np.int32)
            records = list(restored.meta["records"])
            start = restored.step
            digest = records[-1].get("model_digest") if records else None
            log(f"[{method}] resumed after cycle {start} of {num_cycles}")

    for cycle in range(start, num_cycles if stop_after is None else stop_after):
        times: dict[str, float] = {}
        labeled_mask = label_cycle >= 0
        t0 = time.perf_counter()
        preds = PoolPredictions()
        if cycle > 0:
            predict_key = named_key(cycle_key(key, method, cycle), "predict")
            preds = _predict_pool(method, net, predict_key, pool.images, settings, mean, std, mesh)
        times["predict"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        picked = np.asarray(
            select(
                method,
                selection_key(key, method, cycle),
                cycle=cycle,
                num_cycles=num_cycles,
                k=int(counts[cycle]),
                labeled_mask=labeled_mask,
                context=context,
                preds=preds,
            ),
            np.int64,
        )
        times["selection"] = time.perf_counter() - t0
        _check_selection(picked, labeled_mask, int(counts[cycle]), method, cycle)
        label_cycle[picked] = cycle
        labeled = np.flatnonzero(label_cycle >= 0)

        t0 = time.perf_counter()
        if not warm_start and cycle > 0:
            net = fresh_model(cycle)
        parent = digest if (warm_start and digest is not None) else _digest(root_digest, cycle)
        digest = _digest(
            parent,
            cycle,
            labeled,
            np.ascontiguousarray(pool.images[labeled]),
            np.asarray(pool.labels[labeled], np.int64),
        )
        stored = None if model_store is None else model_store.load(digest, nnx.state(net))
        if stored is not None:
            nnx.update(net, stored[0])
            train_loss = stored[1].get("train_loss")
        else:
            history = train.fit(
                main_train_key(key, cycle),
                net,
                pool.images[labeled],
                pool.labels[labeled],
                **fit_kwargs(settings, mean, std, mesh),
                recipe=settings.recipe,
            )
            train_loss = _last_loss(history)
            if model_store is not None:
                model_store.save(digest, nnx.state(net), meta={"train_loss": train_loss})
        times["training"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        ev = dict(
            batch_size=settings.eval_batch_size,
            mean=mean,
            std=std,
            mesh=mesh,
            tta_flip=settings.recipe.tta_flip,
            dtype=settings.dtype,
        )
        logits = train.predict(net, evaluation.images, **ev).logits_NC
        acc = float(np.mean(np.argmax(logits, -1) == np.asarray(evaluation.labels)))
        record = {
            "method": method,
            "cycle": cycle,
            "num_labeled": int(labeled.size),
            "fraction": labeled.size / pool_size,
            "accuracy": acc,
            "selected": picked.tolist(),
            "train_loss": train_loss,
            "model_digest": digest,
            "shared_model": stored is not None,
        }
        if validation is not None:
            val_logits = train.predict(net, validation.images, **ev).logits_NC
            record["val_accuracy"] = float(
                np.mean(np.argmax(val_logits, -1) == np.asarray(validation.labels))
            )
            logits = val_logits
        record["majority_share"] = collapse_share(logits)
        record["collapsed"] = record["majority_share"] > COLLAPSE_SHARE
        times["evaluation"] = time.perf_counter() - t0
        record["seconds"] = {k: round(v, 3) for k, v in times.items()}
        records.append(record)
        if checkpointer is not None:
            checkpointer.save(
                cycle + 1, state=nnx.state(net), label_cycle=label_cycle, meta={"records": records}
            )
        trained = "shared model" if stored is not None else f"train {times['training']:.1f}s"
        log(
            f"[{method}] cycle {cycle + 1}/{num_cycles}: {labeled.size} labeled "
            f"({100 * labeled.size / pool_size:.1f}%), accuracy {100 * acc:.2f}% "
            f"({trained}, select {times['selection']:.2f}s)"
        )
        if record["collapsed"]:
            log(
                f"[{method}] cycle {cycle + 1}: COLLAPSED: the model predicts one class for "
                f"{100 * record['majority_share']:.0f}% of the "
                f"{'validation' if validation is not None else 'evaluation'} images; its "
                "accuracy is reported as a failure, not a result"
            )
        if on_cycle is not None:
            on_cycle(record)
    return records


def lineage_root(init_key, model_key: tuple, settings: TrainSettings, mean, std, ndev: int):
    """The digest every model of one (seed, method) chain descends from (`ModelStore` keys).

    It hashes the initial weights' key, the network, the training settings, the input
    normalisation and, when data parallel, the device count: data parallelism changes the
    float summation order and so the trained weights, so models trained on other device
    counts are not the same model (1 device keeps the digests of older runs).
    """
    return _digest(
        "init",
        jax.random.key_data(init_key),
        repr((*model_key, _settings_key(settings), tuple(mean), tuple(std))),
        *([] if ndev == 1 else [f"devices={ndev}"]),
    )


def _digest(*parts) -> str:
    """SHA-256 over arrays (their dtype, shape and bytes) and other values (their repr)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray | jax.Array):
            a = np.asarray(p)
            h.update(json.dumps([str(a.dtype), a.shape]).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        else:
            h.update(repr(p).encode())
        h.update(b"|")
    return h.hexdigest()[:24]


def _last_loss(history) -> float | None:
    losses = history.get("loss") if isinstance(history, dict) else None
    if losses is None or len(losses) == 0:
        return None
    return float(np.asarray(losses)[-1])


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
    "main_train_key",
    "named_key",
    "pretext_outputs",
    "rotate_each",
    "run_cycles",
    "search_beta",
]
