"""The active-learning loop (SPEC Steps 1-6) as library code: no flags, explicit arguments.

Usage::

    outs = features.pretext_outputs(key, pool.images, model=ModelSpec(4, 3, 0.25),
                                    settings=pretext_cfg, mean=ds.mean, std=ds.std)
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
from typing import NamedTuple

import jax
import numpy as np

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
from bal_jax.settings import (
    AUGMENTATIONS,
    ModelSpec,
    Split,
    TrainSettings,
    augment_kwargs,
    fit_kwargs,
)

# A trained model that puts more than this share of the validation images into one class has
# collapsed (a constant predictor scores chance): a failure to report, not a result.
COLLAPSE_SHARE = 0.8


def collapse_share(logits_NC: np.ndarray) -> float:
    """Share of the images predicted as the most frequent predicted class (1.0 = constant)."""
    pred = np.argmax(np.asarray(logits_NC), axis=-1)
    return float(np.bincount(pred).max() / max(pred.size, 1))


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
    label_cycle, records = _resume(checkpointer, learner, pool_size)
    start = len(records)
    if start:
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


def _resume(checkpointer, learner, pool_size: int) -> tuple[np.ndarray, list[dict]]:
    """(label cycles, records) of the latest checkpoint, its model loaded into `learner`;
    nothing labeled and no records without one."""
    restored = None if checkpointer is None else checkpointer.restore(learner.state())
    if restored is None:
        return np.full(pool_size, -1, np.int32), []
    learner.load_state(restored.state)
    records = list(restored.meta["records"])
    learner.digest = records[-1].get("model_digest") if records else None
    return restored.label_cycle.astype(np.int32), records


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
    "COLLAPSE_SHARE",
    "BALOptions",
    "BetaSearch",
    "ModelSpec",
    "Split",
    "TrainSettings",
    "augment_kwargs",
    "collapse_share",
    "fit_kwargs",
    "run_cycles",
    "search_beta",
]
