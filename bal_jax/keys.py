"""Keys and digests: every random draw of a run and every stored model's identity.

    key = jax.random.key(seed)
    selection_key(key, "bal", cycle)     # what `select` gets in a cycle (runner and labeling)
    main_train_key(key, cycle)           # the classifier's training key in a cycle
    lineage_root(init_key, ...)          # the digest a method's chain of models descends from

Every key is derived from (seed, purpose, method, cycle) only, so a resumed run, another
process and the labeling tool draw exactly what an uninterrupted runner draws. Model digests
hash everything that decides a trained model (initial weights, training keys, settings, labeled
sets and `TRAIN_CODE_VERSION`), so a `ModelStore` never hands back a model that other inputs or
older training code produced.
"""

from __future__ import annotations

import hashlib
import json
import zlib

import jax
import numpy as np

from bal_jax.methods import HOT_START, SWITCH_SELECTORS

__all__ = [
    "TRAIN_CODE_VERSION",
    "cycle_key",
    "digest",
    "lineage_root",
    "main_train_key",
    "named_key",
    "selection_key",
    "settings_key",
]

# Version of the classifier training code (bal_jax.train's fit, the VGG16, bal_jax.heads):
# part of every model digest. Bump it with any change that changes a trained model, so stores
# written by older code are not reused.
TRAIN_CODE_VERSION = 1


def named_key(key: jax.Array, name: str) -> jax.Array:
    """A key for a named purpose, stable across processes (no Python hash randomisation)."""
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def main_train_key(key: jax.Array, cycle: int) -> jax.Array:
    """The main model's training key in cycle `cycle`: a function of the seed's key and the
    cycle only, so every method (and the labeling tool) trains identical models on identical
    labeled sets."""
    return jax.random.fold_in(named_key(key, "main_train"), cycle)


def cycle_key(key: jax.Array, method: str, cycle: int) -> jax.Array:
    """The per-cycle key of `method` (its prediction and selection keys derive from it).

    ``bal_switch``'s typical cycles are TypiClust's own picks (the same keys), and
    ``bal_herding``'s MaxHerding's, so each shares its selector's trained models and differs
    only from the switch on.
    """
    return jax.random.fold_in(named_key(key, SWITCH_SELECTORS.get(method, method)), cycle)


def selection_key(key: jax.Array, method: str, cycle: int) -> jax.Array:
    """The key `select` gets in cycle `cycle`: cold-start methods (not HOT_START) share one
    random first set per seed; the runner and the labeling tool both draw it here."""
    if cycle == 0 and method not in HOT_START:
        return named_key(key, "initial_set")
    return named_key(cycle_key(key, method, cycle), "select")


def digest(*parts) -> str:
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


def settings_key(settings) -> tuple:
    """The fields of a `TrainSettings` that decide a training's result, for model digests.
    `dtype` and `steps_per_dispatch` are left out at their defaults so that digests of runs
    made before they existed stay comparable."""
    fields = settings._asdict()
    if fields.get("dtype") == "float32":
        del fields["dtype"]
    if fields.get("steps_per_dispatch") == 1:
        del fields["steps_per_dispatch"]
    return tuple(fields.values())


def lineage_root(init_key, model_key: tuple, settings, mean, std, ndev: int) -> str:
    """The digest every model of one (seed, method) chain descends from (`ModelStore` keys).

    It hashes the initial weights' key, the network, the training settings, the input
    normalisation, `TRAIN_CODE_VERSION` and, when data parallel, the device count: data
    parallelism changes the float summation order and so the trained weights, so models
    trained on other device counts are not the same model.
    """
    return digest(
        "init",
        jax.random.key_data(init_key),
        repr((*model_key, settings_key(settings), tuple(mean), tuple(std))),
        f"train code v{TRAIN_CODE_VERSION}",
        *([] if ndev == 1 else [f"devices={ndev}"]),
    )
