"""The stored state of a labeling project: pool, features and CDD order, label journal.

    store = ProjectStore("runs/photos")    # a folder made by LabelingProject.create
    store.sync()                           # images added / removed / changed since last time
    store.import_labels("labels.csv")      # validated, then one atomic journal entry
    store.labels()                         # {image id: class}

`LabelingProject` (project.py) adds the active-learning rounds on top of this class.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import jax
import numpy as np

from bal_jax.atomic import atomic_path, write_json
from bal_jax.keys import named_key
from bal_jax.labeling import featurize, formats
from bal_jax.labeling import pool as pool_lib
from bal_jax.labeling.config import LabelingError, ProjectConfig, listed, unreadable_message
from bal_jax.labeling.journal import Journal
from bal_jax.methods import bal_order

__all__ = ["ProjectStore", "read_json", "save_npz", "write_json"]


def save_npz(path: str, arrays: dict) -> None:
    """Writes arrays to `path` via a temporary file, synced to disk, and a rename."""
    with atomic_path(path, suffix=".npz", sync=True) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def log_unreadable(unreadable, log) -> None:
    """Logs the one-line list of unreadable images, if any."""
    message = unreadable_message(unreadable)
    if message:
        log(message)


class ProjectStore:
    """A project folder's pool, features, order and journal (see the package docstring).

    Args:
      workdir: a folder made by `LabelingProject.create`.
      log: one line per step.
    """

    def __init__(self, workdir: str, *, log: Callable[[str], None] = print):
        self.workdir = os.path.abspath(workdir)
        self.log = log
        path = os.path.join(self.workdir, "state.json")
        if not os.path.exists(path):
            raise LabelingError(f"{workdir} is not a labeling project (run init first)")
        self.config = ProjectConfig.from_json(read_json(os.path.join(self.workdir, "config.json")))
        self.state = read_json(path)
        self.journal = Journal(os.path.join(self.workdir, "journal.jsonl"))
        self.key = jax.random.key(self.config.seed)
        self._load_arrays()

    def _path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    def _load_arrays(self) -> None:
        # Pool, features, order and the images that left the pool live in one file, written
        # atomically: never out of step.
        arrays = np.load(self._path("pool.npz"), allow_pickle=False)
        self.pool = pool_lib.Pool.from_arrays(arrays)
        self._features = arrays["features"] if "features" in arrays else None
        self._order = arrays["order"] if "order" in arrays else None
        # What the linear head fits on, where it differs from the selection features.
        self._head_features = arrays["head_features"] if "head_features" in arrays else None
        self._removed: dict[str, str] = {}  # {id: content hash} of images that left the pool
        if "removed_ids" in arrays:  # absent in folders made before it was recorded
            ids, hashes = arrays["removed_ids"].tolist(), arrays["removed_hashes"].tolist()
            self._removed = dict(zip(ids, hashes, strict=True))

    def _save(
        self, pool: pool_lib.Pool, feats=None, order=None, removed=None, head_feats=None
    ) -> None:
        removed = self._removed if removed is None else removed
        arrays = pool.arrays()
        arrays.update(
            removed_ids=np.asarray(list(removed), dtype=str).reshape(-1),
            removed_hashes=np.asarray(list(removed.values()), dtype=str).reshape(-1),
        )
        if feats is not None:
            arrays.update(features=feats, order=order)
        if head_feats is not None:
            arrays.update(head_features=head_feats)
        save_npz(self._path("pool.npz"), arrays)
        self.pool, self._features, self._order, self._removed = pool, feats, order, removed
        self._head_features = head_feats

    @property
    def head_features(self) -> np.ndarray:
        """(N, D) features the linear head fits on (the selection features unless the
        source has better ones for a linear model: patches), or (N, 2, D) with each image's
        mirror image's (`bal_jax.heads.split_views`)."""
        return self._features if self._head_features is None else self._head_features

    @property
    def classes(self) -> list[str]:
        """The initial classes plus those added by imports (`add_classes`)."""
        out = list(self.state["classes"])
        for entry in self.journal.entries():
            out += [c for c in entry.get("new_classes", []) if c not in out]
        return out

    @property
    def counts(self) -> list[int]:
        return list(self.state["counts"])

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.state["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.state["std"])

    def _ensure_features(self, progress) -> None:
        if self._order is not None:
            self.sync()
            return
        feats, head = featurize.pool_features(self, progress)
        self._save(self.pool, feats, self._cdd_order(feats), head_feats=head)

    def _cdd_order(self, feats: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        order = bal_order(
            named_key(self.key, "kmeans"),
            feats,
            num_clusters=self.config.num_clusters or len(self.state["classes"]),
        )
        self.log(
            f"K-means + CDD order of {feats.shape[0]} images ({time.perf_counter() - t0:.1f}s)"
        )
        return order

    def sync(self) -> pool_lib.PoolChange:
        """Brings the pool in line with the images folder (added, removed, changed files).

        New and changed images get features from the stored pretext network and the CDD
        order is recomputed; removed images leave the pool, their labels stay in the journal
        and their ids are remembered (an import naming them says they were removed).
        """
        images = self.state["images"]
        if not os.path.isdir(images):
            raise LabelingError(f"the project's images folder {images} is gone")
        pool, change = pool_lib.update_pool(
            self.pool, images, pool_lib.scan_folder(images), image_size=self.config.image_size
        )
        log_unreadable(change.unreadable, self.log)
        if not change.any:
            return change
        if pool.ids_N.shape[0] == 0:
            raise LabelingError(f"images folder {images} holds no readable images any more")
        if change.removed:
            self.log(
                f"{len(change.removed)} image(s) left {images} and the pool: "
                f"{listed(change.removed)} (their labels stay in the journal)"
            )
        if change.added:
            self.log(f"{len(change.added)} new image(s) joined the pool: {listed(change.added)}")
        if change.changed:
            self.log(f"{len(change.changed)} image(s) changed content: {listed(change.changed)}")
        # Remembered so that a labels file naming them is not blamed on the file (import).
        old_hashes = dict(zip(self.pool.ids_N.tolist(), self.pool.hashes_N.tolist(), strict=True))
        removed = {**self._removed, **{i: old_hashes[i] for i in change.removed}}
        in_pool = set(pool.ids_N.tolist())
        removed = {i: h for i, h in sorted(removed.items()) if i not in in_pool}
        if self._features is None:  # init has not computed features yet
            self._save(pool, removed=removed)
            return change
        fresh = np.isin(pool.ids_N, [*change.added, *change.changed])
        old = {str(i): n for n, i in enumerate(self.pool.ids_N)}
        kept = [old[i] for i in pool.ids_N[~fresh].tolist()]
        feats = np.zeros((pool.ids_N.shape[0], self._features.shape[1]), np.float32)
        feats[~fresh] = self._features[kept]
        head = None
        if self._head_features is not None:
            head = np.zeros((pool.ids_N.shape[0], *self._head_features.shape[1:]), np.float32)
            head[~fresh] = self._head_features[kept]
        if fresh.any():
            self.log(
                f"features of {int(fresh.sum())} image(s) ({self.config.features}); "
                "CDD order recomputed"
            )
            new, new_head = featurize.more_features(
                self, pool.images_NHWC[fresh], pool.ids_N[fresh].tolist()
            )
            feats[fresh] = new
            if head is not None:
                head[fresh] = new_head
            order = self._cdd_order(feats)
        else:
            # Removal only: the remaining images keep their relative order.
            where = {i: n for n, i in enumerate(pool.ids_N.tolist())}
            old_ids = self.pool.ids_N[self._order].tolist()
            order = np.asarray([where[i] for i in old_ids if i in where], np.int64)
        self._save(pool, feats, order, removed, head_feats=head)
        return change

    def labels(self) -> dict[str, str]:
        """{id: class} of every labeled image (removed ones included)."""
        return self.journal.labels()

    def _labeled_pool(self) -> tuple[np.ndarray, np.ndarray]:
        """(pool indices ascending, class indices) of the labeled images in the pool."""
        labels, classes = self.labels(), self.classes
        idx = [n for n, i in enumerate(self.pool.ids_N) if str(i) in labels]
        y = [classes.index(labels[str(self.pool.ids_N[n])]) for n in idx]
        return np.asarray(idx, np.int64), np.asarray(y, np.int32)

    def import_labels(self, path: str, *, add_classes: bool = False) -> dict | None:
        """The `import` command: validates every row, then appends them to the journal.

        Args:
          path: a CSV (id,label or path,label), a Label Studio JSON / JSON_MIN export, or a
            DIR/<class>/<image> folder.
          add_classes: accept labels that are not classes yet (they become classes).

        Returns:
          The journal entry written, or None if every label was already imported.
        """
        self.sync()
        try:
            parsed = formats.read_labels(path)
        except formats.LabelFileError as e:
            raise LabelingError(str(e)) from None
        return self.import_parsed(
            parsed, name=path, source=os.path.abspath(path), add_classes=add_classes
        )

    def import_parsed(
        self, parsed: formats.LabelRows, *, name: str, source: str, add_classes: bool = False
    ) -> dict | None:
        """Checks parsed labels and journals them: the path every import takes (a labels
        file, or annotations pulled from a Label Studio server by `studio.sync`).

        Args:
          parsed: rows from `formats.read_labels` or `formats.parse_label_studio`.
          name: what messages call the labels' origin.
          source: the journal entry's `source`.
          add_classes: accept labels that are not classes yet (they become classes).

        Returns:
          The journal entry written, or None if every label was already imported.
        """
        pid = self.state["project_id"]
        if parsed.projects and pid not in parsed.projects:
            raise LabelingError(
                f"{name} was written for project {listed(sorted(parsed.projects))}, not for "
                f"this one ({pid}); nothing imported"
            )
        if parsed.unannotated:
            self.log(f"{name}: {parsed.unannotated} task(s) without an annotation were skipped")
        return self._import_rows(parsed.rows, source=source, add_classes=add_classes)

    def _gone(self) -> tuple[dict[str, str], set[str]]:
        """({id: content hash or ""} of images known to the project but not in the pool,
        the ids among them that are in the folder but unreadable).

        Known from the pool's record of removed images, the journal (labels of removed
        images stay there; folders made before that record have only these) and the
        pool's list of unreadable files.
        """
        gone: dict[str, str] = {}
        for entry in self.journal.entries():
            hashes = entry.get("hashes", {})
            gone.update({i: hashes.get(i) or gone.get(i, "") for i in entry["labels"]})
        gone.update(self._removed)
        unreadable = {str(line).split("\t", 1)[0] for line in self.pool.skipped}
        gone.update({i: gone.get(i, "") for i in unreadable})
        for i in self.pool.ids_N.tolist():
            gone.pop(i, None)
        return gone, unreadable

    def _resolver(
        self, images: dict[str, str] | None = None
    ) -> Callable[[tuple[str, str]], str | None]:
        """Maps a reference ("id" / "path" / "file", value) to an image id or None.

        Args:
          images: {id: content hash} to resolve against (default: the pool).
        """
        if images is None:
            images = {
                str(i): str(h) for i, h in zip(self.pool.ids_N, self.pool.hashes_N, strict=True)
            }
        ids = set(images)
        root = self.state["images"]
        by_hash = {h: i for i, h in images.items() if h}
        by_name: dict[str, list[str]] = {}
        for i in ids:
            by_name.setdefault(i.rsplit("/", 1)[-1], []).append(i)

        def resolve(ref: tuple[str, str]) -> str | None:
            kind, value = ref
            if kind == "file":
                found = by_hash.get(pool_lib.file_hash(value))
                names = by_name.get(os.path.basename(value), [])
                return found or (names[0] if len(names) == 1 else None)
            value = value.replace(os.sep, "/")
            if kind == "path" and os.path.isabs(value):
                value = os.path.relpath(value, root).replace(os.sep, "/")
            return value if value in ids else None

        return resolve

    def _import_rows(self, rows, *, source: str, add_classes: bool) -> dict | None:
        resolve, classes = self._resolver(), self.classes
        if not rows:
            raise LabelingError(f"{source} holds no labels")
        gone_images, unreadable_ids = self._gone()
        resolve_gone = self._resolver(gone_images)
        # A label that differs from a class only by letter case is a typo, not a new class.
        spelled = {c.casefold(): (c, f"the class {c!r}") for c in classes}
        found: dict[str, tuple[str, str]] = {}
        unknown, empty, new_classes, conflicts, cases = [], [], [], [], []
        first_use = []  # each new class with the row that first names it
        removed, unreadable = [], []
        for where, ref, label in rows:
            image = resolve(ref)
            if image is None:
                gone = resolve_gone(ref)
                if gone is None:
                    unknown.append(f"{where} ({ref[1]})")
                else:
                    (unreadable if gone in unreadable_ids else removed).append(f"{where} ({gone})")
                continue
            if not label:
                empty.append(f"{where} ({image})")
                continue
            known, seen = spelled.setdefault(label.casefold(), (label, f"{label!r} ({where})"))
            if label not in classes and known != label:
                clash = f"{label!r} ({where}) and {seen}"
                if clash not in cases:
                    cases.append(clash)
                continue
            if label not in classes and label not in new_classes:
                new_classes.append(label)
                first_use.append(f"{label} ({where})")
            if image in found and found[image][1] != label:
                first, other = found[image]
                conflicts.append(f"{image} ({first}: {other}, {where}: {label})")
            found.setdefault(image, (where, label))
        self._refuse_gone_only(rows, source, unknown, removed, unreadable)
        problems = []
        if cases:
            problems.append(
                f"label(s) that differ from a class or another label only by letter case: "
                f"{listed(cases)}; use one spelling"
            )
        if unknown:
            problems.append(f"{len(unknown)} unknown image(s): {listed(unknown)}")
        if empty:
            problems.append(f"{len(empty)} empty label(s): {listed(empty)}")
        if conflicts:
            problems.append(
                f"{len(conflicts)} image(s) with conflicting labels: {listed(conflicts)}"
            )
        if new_classes and not add_classes:
            problems.append(
                f"unknown class(es) {listed(first_use)} (classes: {listed(classes, 20)}; "
                "pass --add_classes to add them)"
            )
        if problems:
            raise LabelingError(f"{source}: " + "; ".join(problems) + "; nothing imported")
        for what, items in (
            (f"images removed from the images folder {self.state['images']}", removed),
            ("images that are unreadable now (not in the pool)", unreadable),
        ):
            if items:
                self.log(f"{source}: skipped {len(items)} row(s) of {what}: {listed(items)}")
        labels = {i: lab for i, (_, lab) in found.items()}
        hashes = {str(i): str(h) for i, h in zip(self.pool.ids_N, self.pool.hashes_N, strict=True)}
        entry = self.journal.append(
            labels, source=source, hashes=hashes, extra={"new_classes": new_classes}
        )
        if entry is None:
            self.log(f"all {len(labels)} labels of {source} were already imported; nothing changed")
        else:
            changed = len(entry["relabeled"])
            self.log(
                f"imported {len(entry['labels'])} label(s) from {source}"
                + (f" ({changed} changed an earlier label)" if changed else "")
                + (f"; new classes: {', '.join(new_classes)}" if new_classes else "")
            )
        return entry

    def _refuse_gone_only(self, rows, source: str, unknown, removed, unreadable) -> None:
        """Raises when no row names an image of the pool, saying why (removed, unreadable,
        or another project's file)."""
        if len(unknown) + len(removed) + len(unreadable) < len(rows):
            return
        reasons = []
        if removed:
            reasons.append(
                f"{len(removed)} of them name image(s) removed from the images folder "
                f"{self.state['images']} (e.g. {removed[0]})"
            )
        if unreadable:
            reasons.append(
                f"{len(unreadable)} name image(s) that are unreadable now (e.g. {unreadable[0]})"
            )
        if unknown:
            reasons.append(f"{len(unknown)} name no image of this project (e.g. {unknown[0]})")
        if not removed and not unreadable:
            raise LabelingError(
                f"none of the {len(rows)} rows of {source} names an image of this project "
                f"(e.g. {unknown[0]}); is it another project's file? Nothing imported"
            )
        raise LabelingError(
            f"none of the {len(rows)} rows of {source} names an image in the pool: "
            + ", ".join(reasons)
            + "; nothing imported"
        )
