r"""Label your own images with BAL, one round at a time (a thin CLI over `LabelingProject`).

    python -m experiments.label init --images=photos/ --workdir=runs/photos \
        --classes=cat,dog,bird --per_round=200 --rounds=5
    python -m experiments.label next --workdir=runs/photos        # rounds/00/to_label.csv
    python -m experiments.label import --workdir=runs/photos --labels=round0_labeled.csv
    python -m experiments.label next --workdir=runs/photos        # trains, picks round 1
    python -m experiments.label status --workdir=runs/photos
    LABEL_STUDIO_API_KEY=... python -m experiments.label sync --workdir=runs/photos \
        --label_studio_url=http://localhost:8080   # instead of import: rounds <-> Label Studio
    python -m experiments.label export --workdir=runs/photos --out=runs/photos_model
    python -m experiments.label predict --model=runs/photos_model --images=new/ --out=preds.csv

Every command can be interrupted and re-run. Settings flags belong to `init`; given to a later
command they must match the project's (a different configuration is refused).
"""

from __future__ import annotations

import dataclasses
import json
import logging as std_logging
import os
import sys
import time

import numpy as np
from absl import app, flags, logging

from bal_jax import parallel
from bal_jax.labeling import LabelingError, LabelingProject, ProjectConfig, predict_folder, studio
from bal_jax.labeling.config import FEATURE_SOURCES, replace_settings
from bal_jax.labeling.models import read_meta
from experiments import config as config_lib
from experiments import typed_flags

COMMANDS = ("init", "next", "import", "sync", "status", "export", "predict")

# The runner's training flags a project takes, with their types, help and stages
# (experiments.config.TRAIN_FLAGS: the runner's stage `train` is a project's `main`).
TRAIN_FLAG_NAMES = (
    "pretext_epochs",
    "pretext_batch_size",
    "pretext_lr",
    "pretext_milestones",
    "epochs",
    "batch_size",
    "lr",
    "milestones",
    "eval_batch_size",
)
_STAGES = {"pretext_train": "pretext", "train": "main"}
# A project's simclr features train at --pretext_lr (the runner's at --simclr_lr).
_HELP = {"pretext_lr": "Pretext learning rate (rotation: SGD, 0.1; simclr: Adam, 1e-3)."}
_train_parsers: dict = {}


def define_flags() -> None:
    """The command's flags (defined on demand: other commands own some of the names)."""
    flags.DEFINE_string("workdir", None, "The project folder.")
    flags.DEFINE_string("images", None, "init: folder of images; predict: images to label.")
    flags.DEFINE_string(
        "labels",
        None,
        "init/import: CSV (id,label or path,label), Label Studio JSON, or DIR/<class>.",
    )
    flags.DEFINE_integer("k", None, "next: images to pick (default: the round's budget).")
    flags.DEFINE_bool("force", False, "next: go on though the last round is not labeled.")
    flags.DEFINE_bool("add_classes", False, "import/sync: unknown labels become classes.")
    flags.DEFINE_string(
        "label_studio_url",
        None,
        f"sync: the Label Studio server (access token in ${studio.API_KEY_ENV}).",
    )
    flags.DEFINE_bool("cv", True, "status: cross-validated accuracy on the labels so far.")
    flags.DEFINE_string("out", None, "export: model folder; predict: CSV to write.")
    flags.DEFINE_string("model", None, "predict: an exported model (default: --workdir's).")

    # Settings of `init` (ProjectConfig).
    flags.DEFINE_list("classes", None, "Class names (default: DIR/<class>/ folders or --labels).")
    flags.DEFINE_integer("image_size", None, "Side images are resized to (32, 64, ...).")
    flags.DEFINE_enum("budget", None, ["small", "medium", "large"], "The paper's budget schedule.")
    flags.DEFINE_integer("per_round", None, "Custom budget: images per round (with --rounds).")
    flags.DEFINE_integer("rounds", None, "Custom budget: number of rounds (with --per_round).")
    flags.DEFINE_float("width", None, "VGG16 channel multiplier.")
    flags.DEFINE_integer("seed", None, "Seed of every random draw.")
    flags.DEFINE_float("beta", None, "Balancing factor (default: the released code's per budget).")
    flags.DEFINE_integer("num_clusters", None, "K-means K (default: the number of classes).")
    flags.DEFINE_integer("cv_folds", None, "Folds of status's cross-validated accuracy.")
    flags.DEFINE_string(
        "features",
        None,
        "init: patches (default: k-means patch features, no network), rotation (the paper's "
        "rotation network), simclr (SimCLR, Adam at --pretext_lr default 1e-3) or FILE, your "
        "own embeddings (.npz/.npy/.csv/.parquet keyed by "
        "image id or path); predict: FILE with the new images' embeddings.",
    )
    flags.DEFINE_string(
        "method", None, "init: selection method (default bal_switch; the paper's: bal)."
    )
    flags.DEFINE_string(
        "classifier", None, "init: linear (default: a head on the features) or vgg (paper's)."
    )
    table = config_lib.flag_table()
    _train_parsers.update(
        typed_flags.define({n: (table[n][0], _HELP.get(n, table[n][1])) for n in TRAIN_FLAG_NAMES})
    )
    flags.DEFINE_integer(
        "cpu_devices",
        None,
        "XLA:CPU devices (default: one per core, a power of two up to 8; 1: one device). "
        "Ignored when XLA_FLAGS sets a count; GPUs and TPUs are unaffected.",
    )


_FIELDS = {
    "classes": lambda v: tuple(x.strip() for x in v),
    "image_size": int,
    "budget": str,
    "per_round": int,
    "rounds": int,
    "width": float,
    "seed": int,
    "beta": float,
    "num_clusters": int,
    "cv_folds": int,
    # A file of embeddings is kept by its absolute path (later commands may run elsewhere).
    "features": lambda v: v if v in FEATURE_SOURCES else os.path.abspath(v),
    "method": str,
    "classifier": str,
}


def build_config(flag_values, base: ProjectConfig) -> ProjectConfig:
    """`base` with the settings flags given on the command line applied."""
    changes = {f: parse(flag_values[f].value) for f, parse in _FIELDS.items() if _given(f)}
    stages = {}
    for name, value in typed_flags.given(flag_values, _train_parsers, LabelingError).items():
        names, field = config_lib.TRAIN_FLAGS[name]
        for stage in (_STAGES[n] for n in names):
            stages[stage] = replace_settings(
                stages.get(stage, getattr(base, stage)), **{field: value}
            )
    changes.update(stages)
    return dataclasses.replace(base, **changes)


def _given(name: str) -> bool:
    return flags.FLAGS[name].value is not None


def _log(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


def _progress(total: int):
    def show(epoch, metrics=None):
        done = min(int(epoch) + 1, total)
        bar = "#" * (20 * done // total) + "." * (20 - 20 * done // total)
        loss = ""
        if isinstance(metrics, dict) and metrics.get("loss") is not None:
            loss = f" loss {float(np.asarray(metrics['loss']).reshape(-1)[-1]):.4f}"
        _log(f"pretext [{bar}] epoch {done}/{total}{loss}")

    return show


def format_status(s: dict) -> str:
    """The `status` printout of `LabelingProject.status()`."""
    lines = [
        f"project {s['project_id']}: {s['pool']} images in {s['images']}"
        + (f" ({s['unreadable']} unreadable, skipped)" if s["unreadable"] else ""),
        f"labeled {s['labeled']} ({100 * s['labeled'] / max(s['pool'], 1):.1f}%); budget "
        f"{len(s['budget'])} rounds, {sum(s['budget'])} images; beta {s['beta']:g} "
        f"({s['beta_source']})",
        "per class: " + ", ".join(f"{c} {n}" for c, n in s["per_class"].items()),
    ]
    lines += [
        f"round {r['round']}: {r['picked']} picked, {r['labeled']} labeled, {r['pending']} pending"
        for r in s["rounds"]
    ] or ["no round picked yet (run next)"]
    lines.append(f"labeled outside the rounds (initial labels): {s['labeled_outside_rounds']}")
    if s["labels_of_removed_images"]:
        lines.append(f"labels of images no longer in the folder: {s['labels_of_removed_images']}")
    if s["cv"]:
        cv = s["cv"]
        how = (
            f"folds {', '.join(f'{100 * a:.1f}' for a in cv['accuracies'])}"
            if cv["accuracies"]
            else f"linear head, L2 {cv['l2']:g} chosen on the same folds"
        )
        lines.append(
            f"{cv['folds']}-fold cross-validated accuracy on the {cv['num_labels']} "
            f"labels: {100 * cv['mean']:.1f}% ({how})"
        )
    lines.append(f"features {s['features']}, method {s['method']}, classifier {s['classifier']}")
    return "\n".join(lines)


def _need(name: str, command: str):
    value = flags.FLAGS[name].value
    if value is None:
        raise LabelingError(f"{command} needs --{name}")
    return value


def _open(command: str) -> LabelingProject:
    project = LabelingProject.open(_need("workdir", command), log=_log)
    wanted = build_config(flags.FLAGS, project.config)
    if wanted != project.config:
        diff = [f for f, v in project.config.to_json().items() if wanted.to_json()[f] != v]
        raise LabelingError(
            f"project {project.workdir} was made by a different configuration (differs in: "
            f"{', '.join(diff)}); drop those flags or use another --workdir"
        )
    return project


def run(command: str) -> None:
    """Runs one command; raises LabelingError on bad input."""
    if command == "init":
        config = build_config(flags.FLAGS, ProjectConfig())
        LabelingProject.create(
            _need("workdir", command),
            images=_need("images", command),
            config=config,
            labels=flags.FLAGS.labels,
            log=_log,
            progress=_progress(config.pretext.epochs),
        )
    elif command == "next":
        rnd = _open(command).next_round(k=flags.FLAGS.k, force=flags.FLAGS.force)
        print(f"label the {len(rnd.picks)} images listed in {rnd.csv_path}")
    elif command == "import":
        _open(command).import_labels(_need("labels", command), add_classes=flags.FLAGS.add_classes)
    elif command == "sync":
        url = _need("label_studio_url", command)
        client = studio.connect(url, os.environ.get(studio.API_KEY_ENV))  # before any work
        r = studio.sync(_open(command), url=url, client=client, add_classes=flags.FLAGS.add_classes)
        print(
            f"Label Studio project {r.ls_project} at {url}: {r.tasks} task(s), {r.uploaded} "
            f"uploaded now; {r.imported} label(s) imported now, {r.pending} task(s) to label"
        )
    elif command == "status":
        print(format_status(_open(command).status(cv=flags.FLAGS.cv)))
    elif command == "export":
        _open(command).export(_need("out", command))
    elif command == "predict":
        model = flags.FLAGS.model or _latest_export()
        read_meta(model, required=True)  # one sentence for an unfinished or missing export
        result = predict_folder(
            model,
            _need("images", command),
            out=_need("out", command),
            features_file=flags.FLAGS.features,
            log=_log,
        )
        line = f"labeled {result['num_images']} images -> {result['out']}"
        if result["accuracy"] is not None:
            line += (
                f"; accuracy {100 * result['accuracy']:.2f}% on the {result['num_with_truth']} "
                "images under <class>/ folders"
            )
        _log(line)


def _latest_export() -> str:
    if flags.FLAGS.workdir is None:
        raise LabelingError("predict needs --model (an exported model) or --workdir")
    path = os.path.join(flags.FLAGS.workdir, "exports.json")
    if not os.path.exists(path):
        raise LabelingError(f"project {flags.FLAGS.workdir} has no export yet; run export first")
    with open(path) as f:
        return json.load(f)["latest"]


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"give one command of {', '.join(COMMANDS)}; got {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    std_logging.getLogger("absl").setLevel(std_logging.WARNING)
    devices = flags.FLAGS.cpu_devices
    if devices is not None and devices < 1:
        sys.exit(f"error: --cpu_devices must be at least 1, got {devices}")
    parallel.use_cpu_devices(devices)  # before any JAX computation
    t0 = time.perf_counter()
    try:
        run(argv[1])
    except (LabelingError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    _log(f"{argv[1]} done in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    define_flags()
    app.run(main)
