"""Per-cycle checkpoints of an active-learning run, written atomically with orbax.

Usage::

    ckpt = RunCheckpointer(workdir / "seed0" / "bal")
    latest = ckpt.restore(abstract_state)        # None on a fresh run
    ...
    ckpt.save(cycle + 1, state=nnx.state(model), label_cycle=label_cycle_N, meta={...})

A step is the number of completed cycles. Orbax writes each step into a temporary
directory and renames it when complete, so a process killed at any point leaves either
the previous step or the new one, never a half-written checkpoint.

Several processes (`jax.distributed`): every process calls `save` and `restore` with the same
arguments; orbax writes each array once (from its first replica) and process 0 writes the rest.
Pass states of global arrays (e.g. replicated on the mesh) and restore onto them.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from bal_jax.atomic import write_text
from bal_jax.parallel import barrier, is_primary


class Restored(NamedTuple):
    """A restored step: `step` completed cycles, model state, label cycles and metadata."""

    step: int
    state: Any
    label_cycle: np.ndarray
    meta: dict


class RunCheckpointer:
    """Saves and restores (model state, label cycles, JSON metadata) per cycle.

    `label_cycle_N` is an (N,) int32 array over the pool: the cycle in which each image was
    labeled, -1 while unlabeled. It holds the labeled set and its order in one fixed-shape
    array (orbax refuses empty arrays, which a list of indices is before the first cycle).
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2):
        self._manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                # Synchronous saves: the next cycle mutates the model in place.
                enable_async_checkpointing=False,
            ),
            item_names=("state", "label_cycle", "meta"),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, *, state: Any, label_cycle: np.ndarray, meta: dict) -> None:
        """Writes step `step` (completed cycles) atomically."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                label_cycle=ocp.args.ArraySave(np.asarray(label_cycle, np.int32)),
                meta=ocp.args.JsonSave(meta),
            ),
        )
        self._manager.wait_until_finished()

    def restore(self, abstract_state: Any) -> Restored | None:
        """Restores the latest step onto `abstract_state`'s structure, or None if none."""
        step = self._manager.latest_step()
        if step is None:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract),
                label_cycle=ocp.args.ArrayRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return Restored(step, out.state, np.asarray(out.label_cycle), dict(out.meta))

    def close(self) -> None:
        self._manager.close()


class ModelStore:
    """Trained models keyed by their lineage digest, so an identical training runs once.

    A main-task model is a function of its initial weights, its training key, the recipe and
    every labeled set it was trained on (warm starts chain them). `bal_jax.active_loop` hashes
    all of that into a digest; methods of one seed that start from the same labeled set (the
    shared random set of the cold-start baselines, BAL's first CDD window for every beta
    candidate) then share one trained model and its accuracy.

        store = ModelStore(workdir / "seed0" / "models")
        state = store.load(digest, nnx.state(model))     # None when not trained yet
        store.save(digest, nnx.state(model), meta={"train_loss": 0.3})

    Each entry is written atomically (orbax writes to a temporary folder and renames it; the
    metadata file, written last by process 0, marks the entry complete).
    """

    def __init__(self, directory: str | os.PathLike):
        self._dir = os.path.abspath(directory)
        os.makedirs(self._dir, exist_ok=True)
        self._ckptr = ocp.StandardCheckpointer()

    def close(self) -> None:
        """Ends the checkpointer's background threads (before `jax.distributed` shuts down: an
        orbax checkpointer finalised after it aborts the process)."""
        self._ckptr.close()

    def __enter__(self) -> ModelStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _paths(self, digest: str) -> tuple[str, str]:
        base = os.path.join(self._dir, digest)
        return os.path.join(base, "state"), os.path.join(base, "meta.json")

    def load(self, digest: str, abstract_state: Any) -> tuple[Any, dict] | None:
        """The stored state (on `abstract_state`'s structure) and metadata, or None."""
        state_path, meta_path = self._paths(digest)
        if not os.path.exists(meta_path):
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        state = self._ckptr.restore(state_path, abstract)
        with open(meta_path) as f:
            return state, json.load(f)

    def save(self, digest: str, state: Any, *, meta: dict) -> None:
        """Stores a trained model under `digest` (a no-op when it is already stored)."""
        state_path, meta_path = self._paths(digest)
        if os.path.exists(meta_path):
            return
        if is_primary() and os.path.exists(state_path):
            shutil.rmtree(state_path)  # a save interrupted before its metadata: redo it
        barrier(f"model store: {digest} cleared")
        self._ckptr.save(state_path, state)
        self._ckptr.wait_until_finished()
        if is_primary():
            write_text(meta_path, json.dumps(meta))
        # Every process sees the entry complete before any looks for it again.
        barrier(f"model store: {digest} saved")
