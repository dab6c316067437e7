"""`LabelingProject`: active learning on a folder of your own images, one round at a time.

    project = LabelingProject.create("runs/photos", images="/data/photos",
                                     config=ProjectConfig(classes=("cat", "dog"), per_round=200,
                                                          rounds=5))
    rnd = project.next_round()          # writes rounds/00/to_label.csv and tasks.json
    project.import_labels("rounds/00/to_label_done.csv")
    rnd = project.next_round()          # trains on the labels so far, picks round 1
    project.export("model/")            # latest classifier (linear head or VGG16)

The features, selection method and classifier are the project's settings (`ProjectConfig`:
by default patch features, `bal_herding` and a linear head; the paper's setting is rotation
features, `bal` and VGG16). Every method re-reads the project folder, so each can be killed
and re-run; see the package docstring for the folder's layout. Random draws are derived from
the seed exactly as in `bal_jax.active_loop.run_cycles` (pretext, K-means, main model,
`selection_key`), so given the same pool, seed, labels, features and method a project picks
the images the runner's cycle picks.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from bal_jax import heads
from bal_jax.data import channel_stats
from bal_jax.keys import selection_key
from bal_jax.labeling import classifiers, featurize, formats, models
from bal_jax.labeling import pool as pool_lib
from bal_jax.labeling.config import (
    LabelingError,
    ProjectConfig,
    bind,
    choose_beta,
    folder_classes,
    listed,
    round_counts,
    setting_line,
)
from bal_jax.labeling.store import ProjectStore, log_unreadable, read_json, save_npz, write_json
from bal_jax.methods import NEEDS_PRETEXT, PoolPredictions, SelectionContext, select
from bal_jax.models import VGG16

__all__ = ["LabelingError", "LabelingProject", "ProjectConfig", "Round"]


class Round(NamedTuple):
    """A picked round: its index, the picks, beta and where it came from, the files written."""

    index: int
    picks: list[formats.Pick]
    beta: float
    beta_source: str
    csv_path: str
    tasks_path: str


class LabelingProject(ProjectStore):
    """BAL rounds on a project folder: pick, train, report, export.

    Use `create` (the `init` command) or `open`; every public method first brings the pool in
    line with the images folder (`sync`).
    """

    @classmethod
    def create(
        cls,
        workdir: str,
        *,
        images: str,
        config: ProjectConfig,
        labels: str | None = None,
        log: Callable[[str], None] = print,
        progress: Callable | None = None,
    ) -> LabelingProject:
        """The `init` command: scans, decodes, trains the pretext network, orders the pool.

        Re-running it on the same folder with the same configuration resumes where a
        killed run stopped; a different configuration is refused.

        Args:
          workdir: the project folder (created).
          images: folder of images, any depth; DIR/<class>/ folders start labeled.
          config: the project's settings.
          labels: optional labels file (any `import` format) of images already labeled.
          log: one line per step.
          progress: `callable(epoch, metrics)` during pretext training.

        Returns:
          The opened project.
        """
        config.check()
        images = os.path.abspath(os.path.expanduser(images))
        if not os.path.isdir(images):
            raise LabelingError(f"images folder {images} does not exist")
        workdir = os.path.abspath(workdir)
        bind(workdir, config.to_json(), images)
        snapshot = pool_lib.scan_folder(images)
        if not snapshot:
            raise LabelingError(
                f"images folder {images} holds no images ({', '.join(pool_lib.IMAGE_EXTENSIONS)})"
            )
        if labels:
            try:  # a malformed labels file is refused before any image is decoded
                formats.read_labels(labels)
            except formats.LabelFileError as e:
                raise LabelingError(str(e)) from None
        if config.features_file is not None:  # every image has one row: before decoding
            featurize.check_embeddings(config, images, list(snapshot))
        classes, folder_labels = folder_classes(images, list(snapshot), config.classes, labels)
        budget = dict(budget=config.budget, per_round=config.per_round, rounds=config.rounds)
        n = len(snapshot)
        round_counts(**budget, pool_size=n, unlabeled=n - len(folder_labels))
        state_path = os.path.join(workdir, "state.json")
        if not os.path.exists(state_path):
            pool, change = pool_lib.update_pool(
                pool_lib.empty_pool(config.image_size),
                images,
                snapshot,
                image_size=config.image_size,
            )
            log_unreadable(change.unreadable, log)
            n = pool.ids_N.shape[0]
            labeled = len({i for _, (_, i), _ in folder_labels} & set(pool.ids_N.tolist()))
            counts = round_counts(**budget, pool_size=n, unlabeled=n - labeled)
            mean, std = channel_stats(pool.images_NHWC)
            beta, beta_source = choose_beta(
                config.beta,
                budget=None if config.per_round else config.budget,
                counts=counts,
                pool_size=n,
            )
            save_npz(os.path.join(workdir, "pool.npz"), pool.arrays())
            state = {
                "project_id": uuid.uuid4().hex[:12],
                "images": images,
                "classes": list(classes),
                "counts": list(counts),
                "mean": list(mean),
                "std": list(std),
                "beta": beta,
                "beta_source": beta_source,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            with open(os.path.join(workdir, "label_studio_config.xml"), "w") as f:
                f.write(formats.label_studio_config(classes))
            write_json(state_path, state)
            log(
                f"{n} images, classes {listed(classes, 20)}, {len(counts)} rounds of "
                f"{listed(sorted(set(counts)))} images; beta {beta:g} ({beta_source})"
            )
            log(setting_line(config))
        project = cls(workdir, log=log)
        have = set(project.pool.ids_N.tolist())
        folder_labels = [r for r in folder_labels if r[1][1] in have]
        if folder_labels:
            project._import_rows(folder_labels, source=f"{images}/<class>/", add_classes=False)
        if labels:
            project.import_labels(labels)
        project._ensure_features(progress)
        return project

    @classmethod
    def open(cls, workdir: str, *, log: Callable[[str], None] = print) -> LabelingProject:
        """Opens a project made by `create` and syncs it with its images folder."""
        project = cls(workdir, log=log)
        if project._order is None:
            raise LabelingError(f"{workdir}: init did not finish; run init again to resume it")
        project.sync()
        return project

    def rounds(self) -> list[dict]:
        """The records of the picked rounds (rounds/NN/round.json), in order."""
        out = []
        while os.path.exists(path := self._path("rounds", f"{len(out):02d}", "round.json")):
            out.append(read_json(path))
        return out

    def head(self, upto: int) -> tuple[heads.LinearHead, dict]:
        """The linear head that picks round `upto` and its meta (`classifiers.round_head`)."""
        return classifiers.round_head(self, upto)

    def classifier(self, upto: int) -> VGG16:
        """The VGG16 that picks round `upto` (`classifiers.round_network`)."""
        return classifiers.round_network(self, upto)

    def predictions(self, upto: int) -> PoolPredictions:
        """The classifier of round `upto` on the whole pool (what uncertainty methods use)."""
        return classifiers.round_predictions(self, upto)

    def _select(self, r: int, k: int, mask: np.ndarray) -> tuple[np.ndarray, PoolPredictions]:
        """Round r's picks with the project's method: the runner's cycle-r selection (same
        keys, `bal_jax.keys.selection_key`, same `select`), on the project's
        features and classifier."""
        method = self.config.method
        preds = PoolPredictions() if r == 0 else self.predictions(r)
        context = SelectionContext(
            bal_order=self._order,
            pretext_features_ND=self._features if method in NEEDS_PRETEXT else None,
            beta=self.state["beta"],
            probcover_clusters=self.config.num_clusters or len(self.state["classes"]),
        )
        picked = np.asarray(
            select(
                method,
                selection_key(self.key, method, r),
                cycle=r,
                num_cycles=len(self.counts),
                k=k,
                labeled_mask=mask,
                context=context,
                preds=preds,
            ),
            np.int64,
        )
        if picked.shape != (k,) or np.unique(picked).size != k or mask[picked].any():
            raise RuntimeError(f"{method} returned an invalid selection for round {r}")
        return picked, preds

    def next_round(self, *, k: int | None = None, force: bool = False) -> Round:
        """The `next` command: picks the next round with the project's method; writes its files.

        Round r is the runner's cycle r of the same method (`_select`): round 0 needs no
        model (with `bal`: the first k images of the first sub-pool in CDD order; with
        `bal_switch` / `typiclust`: typical images; with `bal_herding` / `maxherding`:
        MaxHerding's coverage picks); later rounds first fit the classifier
        (linear head or VGG16) on all labels so far, whose probabilities drive the
        uncertainty picks (with `bal`: the least confident images of the round's sub-pool,
        paper Eq. 6-8).

        Args:
          k: images to pick (default: the budget's count for this round).
          force: pick even though the previous round is not fully labeled (its pending
            images stay out of the pool).

        Returns:
          The round; rounds/NN/to_label.csv and rounds/NN/tasks.json (Label Studio) hold it.
        """
        self.sync()
        done, counts = self.rounds(), self.counts
        r = len(done)
        if r >= len(counts):
            raise LabelingError(
                f"all {len(counts)} rounds of the budget are picked; export the model, or "
                "start a project with more --rounds"
            )
        labels = self.labels()
        in_pool = set(self.pool.ids_N.tolist())
        if done and not force:
            pending = [i for i in done[-1]["ids"] if i not in labels and i in in_pool]
            if pending:
                raise LabelingError(
                    f"round {r - 1} still has {len(pending)} image(s) without a label (listed "
                    f"in {self._path('rounds', f'{r - 1:02d}', 'to_label.csv')}); import their "
                    "labels first, or pass --force"
                )
        k = counts[r] if k is None else int(k)
        if k < 1:
            raise LabelingError(f"--k must be at least 1, got {k}")
        picked_before = {i for d in done for i in d["ids"]}
        mask = np.asarray([i in labels or i in picked_before for i in self.pool.ids_N.tolist()])
        if int((~mask).sum()) < k:
            left = int((~mask).sum())
            raise LabelingError(f"only {left} images are left to pick, fewer than {k}")
        picked, preds = self._select(r, k, mask)
        classes = self.classes
        root = self.state["images"]
        picks = []
        for n in picked.tolist():
            image = str(self.pool.ids_N[n])
            suggested = conf = None
            if preds.probs_NC is not None:
                suggested = classes[int(np.argmax(preds.probs_NC[n]))]
                conf = float(np.max(preds.probs_NC[n]))
            picks.append(formats.Pick(image, os.path.join(root, image), suggested, conf))
        folder = self._path("rounds", f"{r:02d}")
        os.makedirs(folder, exist_ok=True)
        csv_path = os.path.join(folder, "to_label.csv")
        tasks_path = os.path.join(folder, "tasks.json")
        formats.write_to_label_csv(csv_path, picks)
        formats.write_label_studio_tasks(
            tasks_path, picks, project_id=self.state["project_id"], round_index=r
        )
        record = {
            "round": r,
            "k": k,
            "ids": [p.id for p in picks],
            "beta": self.state["beta"],
            "method": self.config.method,
            "model": None if r == 0 else f"models/round_{r:02d}",
            "forced": bool(force and done),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_json(os.path.join(folder, "round.json"), record)  # written last: commits the round
        self.log(
            f"round {r}: picked {k} images ({self.config.method} on {self.config.features} "
            f"features, {self.config.classifier} classifier; beta {self.state['beta']:g}, "
            f"{self.state['beta_source']}) -> {csv_path}, Label Studio tasks {tasks_path}"
        )
        return Round(r, picks, self.state["beta"], self.state["beta_source"], csv_path, tasks_path)

    def status(self, *, cv: bool = True) -> dict:
        """The `status` command's numbers: labels per class and round, pending, CV accuracy.

        Args:
          cv: compute (or read the cached) cross-validated accuracy of the classifier recipe
            on the labels so far, from round 1 on.

        Returns:
          A JSON-able dict; `format_status` renders it.
        """
        self.sync()
        labels, classes, done = self.labels(), self.classes, self.rounds()
        ids = self.pool.ids_N.tolist()
        in_pool = set(ids)
        picked = {i for d in done for i in d["ids"]}
        labeled = [i for i in ids if i in labels]
        out = {
            "project_id": self.state["project_id"],
            "images": self.state["images"],
            "pool": len(ids),
            "unreadable": int(self.pool.skipped.shape[0]),
            "labeled": len(labeled),
            "per_class": {c: sum(labels[i] == c for i in labeled) for c in classes},
            "rounds": [
                {
                    "round": d["round"],
                    "picked": len(d["ids"]),
                    "labeled": sum(i in labels for i in d["ids"]),
                    "pending": sum(i not in labels and i in in_pool for i in d["ids"]),
                }
                for d in done
            ],
            "labeled_outside_rounds": sum(i not in picked for i in labeled),
            "labels_of_removed_images": sum(i not in in_pool for i in labels),
            "budget": self.counts,
            "beta": self.state["beta"],
            "beta_source": self.state["beta_source"],
            "cv": None,
            "features": self.config.features,
            "method": self.config.method,
            "classifier": self.config.classifier,
        }
        if cv and done and labeled:
            out["cv"] = self.cross_validate()
        return out

    def cross_validate(self) -> dict | None:
        """K-fold accuracy of the classifier on the labels so far (`classifiers.cross_validate`);
        None with fewer than 2 labels per fold."""
        return classifiers.cross_validate(self)

    def _export_features(self, tmp: str, meta: dict) -> None:
        meta["features"] = featurize.FeatureTransform.export(self, tmp)

    def export(self, out: str) -> dict:
        """The `export` command: the classifier trained on every label so far, to `out`.

        Returns:
          The saved model's meta (classes, image size, normalisation, labels it saw).
        """
        self.sync()
        upto = max(len(self.rounds()), 1)
        if self.config.classifier == "linear":
            head, meta = self.head(upto)
            meta = {**meta, "exported_from": self.workdir}
            models.save_head(
                out, head, meta=meta, extra=lambda tmp: self._export_features(tmp, meta)
            )
        else:
            net = self.classifier(upto)
            meta = dict(models.read_meta(self._path("models", f"round_{upto:02d}")))
            meta["exported_from"] = self.workdir
            models.save_model(out, net, meta=meta)
        write_json(self._path("exports.json"), {"latest": os.path.abspath(out)})
        self.log(f"exported the classifier ({meta['num_labels']} labels) to {out}")
        return meta
