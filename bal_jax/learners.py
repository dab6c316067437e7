"""The classifier step of a cycle: fit on the labels so far, predict the pool, score a split.

    learner = VGGLearner(key, pool=pool, ...)            # the paper's VGG16 (SPEC Step 6)
    learner = LinearLearner(key, HeadFeatures(...), pool_labels=pool.labels, num_classes=10)
    info = learner.fit(cycle, labeled)                   # digest, train_loss, shared_model
    preds = learner.predictions(method, predict_key)     # what the uncertainty samplers see
    logits = learner.logits("evaluation")                # or "validation"

`bal_jax.active_loop.run_cycles` drives either through the same cycle, and the labeling tool
fits its linear head with the same `fit_linear_step` / `linear_predictions`, so a classifier
added here reaches the runner, the labeling tool and the library at once.

- `VGGLearner`: the paper's main model, warm-started or re-initialised per cycle, trained by
  `bal_jax.train.fit`; trained models are shared through a `ModelStore` keyed by lineage.
- `LinearLearner` (`--classifier=linear`, issue 23): multinomial logistic regression on fixed
  features (`bal_jax.heads`), its L2 chosen each cycle by cross-validation on the labels only,
  with flip augmentation and flip averaging when the features hold a mirror view. A fit takes
  seconds, so it is refitted from scratch each cycle (no warm start, no store).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx

from bal_jax import heads, parallel, train
from bal_jax.checkpoint import ModelStore
from bal_jax.keys import digest, lineage_root, main_train_key, named_key
from bal_jax.methods import NEEDS_FEATURES, NEEDS_MC_DROPOUT, NEEDS_PROBS, PoolPredictions
from bal_jax.models import VGG16

__all__ = [
    "CLASSIFIERS",
    "DBAL_DROPOUT",
    "DBAL_SAMPLES",
    "HeadFeatures",
    "LinearLearner",
    "VGGLearner",
    "fit_linear_step",
    "linear_predictions",
    "network_predictions",
]

# Classifier options of the runner and the labeling tool: the paper's VGG16 trained on the
# labeled images, or a linear head on fixed features.
CLASSIFIERS = ("vgg", "linear")
# Dropout rate of the classifier for the MC-dropout (DBAL) baseline only.
DBAL_DROPOUT = 0.5
DBAL_SAMPLES = 10


class HeadFeatures(NamedTuple):
    """Fixed features of the linear head, each (N, D) or (N, 2, D) (image and its mirror)."""

    pool: np.ndarray
    evaluation: np.ndarray
    validation: np.ndarray | None = None


def fit_linear_step(
    key: jax.Array, feats, idx: np.ndarray, labels: np.ndarray, *, num_classes: int, folds: int = 3
) -> tuple[heads.LinearHead, heads.CVResult | None]:
    """The linear head on the labeled rows `idx` of pool features `feats` ((N, D) or (N, 2, D)),
    standardised with the whole (unlabeled) pool's statistics, L2 by `folds`-fold CV."""
    upright, mirror = heads.split_views(feats)
    return heads.fit_head(
        key,
        upright[idx],
        labels,
        num_classes=num_classes,
        folds=folds,
        reference=upright,
        mirrored=None if mirror is None else mirror[idx],
    )


def linear_predictions(head: heads.LinearHead, feats) -> PoolPredictions:
    """The head's (flip-averaged) probabilities on `feats`; `features_ND` for Core-Set and
    BADGE: the head's standardised input features (upright view), the penultimate layer of
    a linear classifier, as a network's penultimate features are for the VGG16."""
    upright, mirror = heads.split_views(feats)
    probs = head.probs(upright, mirror)
    return PoolPredictions(
        probs_NC=probs,
        logits_NC=np.log(np.maximum(probs, 1e-12)),
        features_ND=np.asarray((upright - head.mean_D) / head.scale_D, np.float32),
    )


def network_predictions(net, images, **predict_kwargs) -> PoolPredictions:
    """A network's softmax, logits and penultimate features on `images` (`train.predict`'s
    keyword arguments: batch size, normalisation, flip TTA, mesh, dtype)."""
    out = train.predict(net, images, **predict_kwargs)
    logits = np.asarray(out.logits_NC, np.float32)
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    feats = np.asarray(out.features_ND)
    return PoolPredictions(probs_NC=probs, logits_NC=logits, features_ND=feats)


class LinearLearner:
    """A linear head refitted each cycle on all labels so far (see the module docstring)."""

    name = "linear"

    def __init__(
        self,
        key: jax.Array,
        features: HeadFeatures,
        *,
        pool_labels: np.ndarray,
        num_classes: int,
        folds: int = 3,
    ):
        self._key = key
        self._feats = features
        self._labels = np.asarray(pool_labels)
        self._num_classes = num_classes
        self._folds = folds
        self.digest: str | None = None
        dim = heads.split_views(features.pool)[0].shape[1]
        self._head = heads.LinearHead(
            np.zeros(dim, np.float32),
            np.ones(dim, np.float32),
            np.zeros((dim, num_classes), np.float32),
            np.zeros(num_classes, np.float32),
            0.0,
        )
        self._root = digest(
            "linear", jax.random.key_data(key), num_classes, folds, heads.L2_GRID, features.pool
        )

    def state(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v, np.float32) for k, v in self._head.arrays().items()}

    def load_state(self, state: Any) -> None:
        self._head = heads.LinearHead.from_arrays(jax.tree.map(np.asarray, state))

    def fit(self, cycle: int, labeled: np.ndarray) -> dict:
        head, cv = fit_linear_step(
            named_key(main_train_key(self._key, cycle), "head"),
            self._feats.pool,
            labeled,
            self._labels[labeled],
            num_classes=self._num_classes,
            folds=self._folds,
        )
        self._head = head
        self.digest = digest(self._root, labeled, self._labels[labeled])
        return {
            "model_digest": self.digest,
            "shared_model": False,
            "train_loss": None,
            "l2": head.l2,
            "cv_accuracy": None if cv is None else cv.accuracy,
        }

    def predictions(self, method: str, key: jax.Array) -> PoolPredictions:
        del key  # deterministic
        if method in NEEDS_MC_DROPOUT:
            raise ValueError(f"{method} needs MC dropout, which the linear head does not have")
        return linear_predictions(self._head, self._feats.pool)

    def logits(self, split: str) -> np.ndarray:
        feats = getattr(self._feats, split)
        upright, mirror = heads.split_views(feats)
        return np.log(np.maximum(self._head.probs(upright, mirror), 1e-12))


class VGGLearner:
    """The paper's VGG16 (SPEC Step 6): warm-started (or fresh each cycle), trained on the
    labeled images; a model another method already trained on the same lineage is restored
    from `model_store` instead."""

    name = "vgg"

    def __init__(
        self,
        key: jax.Array,
        *,
        method: str,
        pool,
        splits: dict,
        model,
        settings,
        mean: Sequence[float],
        std: Sequence[float],
        warm_start: bool,
        model_store: ModelStore | None,
        mesh,
        fit_kwargs: dict,
        init_key: jax.Array | None = None,
    ):
        """`init_key` (default: derived from `key`) draws the initial weights alone, so a
        study can fix them while `key` changes the data order and augmentation."""
        self._key = key
        self._pool = pool
        self._splits = splits
        self._model = model
        self._settings = settings
        self._mean, self._std = mean, std
        self._warm = warm_start
        self._store = model_store
        self._mesh = mesh
        self._fit_kwargs = fit_kwargs
        self._dropout = DBAL_DROPOUT if method in NEEDS_MC_DROPOUT else 0.0
        self._init_key = named_key(key if init_key is None else init_key, "main_init")
        ndev = mesh.devices.size if mesh is not None else jax.device_count()
        # Not keyed by warm_start: the first cycle trains the same initial weights either way
        # (one model for both), and later cycles differ by their parents (warm: the previous
        # model's digest; scratch: the root and the cycle).
        self._root = lineage_root(
            self._init_key, (tuple(model), self._dropout), settings, mean, std, ndev
        )
        self.digest: str | None = None
        self.net = self._fresh(0)

    def _fresh(self, cycle: int) -> VGG16:
        # Cycle 0 starts from the same weights warm or not; each later scratch cycle draws anew.
        k = self._init_key if cycle == 0 else jax.random.fold_in(self._init_key, cycle)
        net = VGG16(
            self._model.num_classes,
            in_channels=self._model.in_channels,
            width=self._model.width,
            dropout=self._dropout,
            rngs=nnx.Rngs(k),
        )
        if self._mesh is not None:
            # Replicated on the mesh from the start: checkpoints of several processes save and
            # restore global arrays.
            nnx.update(net, parallel.replicate(nnx.state(net), self._mesh))
        return net

    def state(self):
        return nnx.state(self.net)

    def load_state(self, state) -> None:
        nnx.update(self.net, state)

    def fit(self, cycle: int, labeled: np.ndarray) -> dict:
        if not self._warm and cycle > 0:
            self.net = self._fresh(cycle)
        warm_parent = self._warm and self.digest is not None
        parent = self.digest if warm_parent else digest(self._root, cycle)
        pool = self._pool
        self.digest = digest(
            parent,
            cycle,
            labeled,
            np.ascontiguousarray(pool.images[labeled]),
            np.asarray(pool.labels[labeled], np.int64),
        )
        stored = None if self._store is None else self._store.load(self.digest, self.state())
        steps = None
        if stored is not None:
            self.load_state(stored[0])
            train_loss = stored[1].get("train_loss")
        else:
            history = train.fit(
                main_train_key(self._key, cycle),
                self.net,
                pool.images[labeled],
                pool.labels[labeled],
                **self._fit_kwargs,
                recipe=self._settings.recipe,
            )
            train_loss = _last_loss(history)
            steps = int(history["epochs"] * history["steps_per_epoch"])
            if self._store is not None:
                self._store.save(self.digest, self.state(), meta={"train_loss": train_loss})
        return {
            "model_digest": self.digest,
            "shared_model": stored is not None,
            "train_loss": train_loss,
            "steps": steps,  # optimizer steps run here (None: restored from the store)
        }

    def _eval_kwargs(self) -> dict:
        s = self._settings
        return dict(
            batch_size=s.eval_batch_size,
            mean=self._mean,
            std=self._std,
            mesh=self._mesh,
            dtype=s.dtype,
        )

    def predictions(self, method: str, key: jax.Array) -> PoolPredictions:
        images = self._pool.images
        if method in NEEDS_MC_DROPOUT:
            mc = train.predict_mc_dropout(
                key, self.net, images, num_samples=DBAL_SAMPLES, **self._eval_kwargs()
            )
            return PoolPredictions(mc_probs_TNC=np.asarray(mc))
        if method not in NEEDS_PROBS | NEEDS_FEATURES and method != "bal":
            return PoolPredictions()
        return network_predictions(
            self.net, images, tta_flip=self._settings.recipe.tta_flip, **self._eval_kwargs()
        )

    def logits(self, split: str) -> np.ndarray:
        out = train.predict(
            self.net,
            self._splits[split].images,
            tta_flip=self._settings.recipe.tta_flip,
            **self._eval_kwargs(),
        )
        return np.asarray(out.logits_NC)


def _last_loss(history) -> float | None:
    losses = history.get("loss") if isinstance(history, dict) else None
    if losses is None or len(losses) == 0:
        return None
    return float(np.asarray(losses)[-1])
