r"""A real run of the labeling workflow with a scripted annotator (README "Label your own images").

    python -m experiments.label_demo --source=/path/cifar10-jpg --out=/tmp/label_demo

Copies `--num_images` training JPEGs of an image-folder dataset (SOURCE/train/<class>/...,
the same number per class) into OUT/images/ under anonymous names (no class folders), keeps
their true classes in OUT/truth.json, then runs `python -m experiments.label` init, and
`--rounds` times next -> the annotator writes the round's true labels as CSV -> import;
then status, export and predict on SOURCE/test/. It prints every command, its output
(shortened), its wall time, the class histogram of each round's picks and a summary table.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from absl import app, flags


def define_flags() -> None:
    """The command's flags (defined on demand: other commands own some of the names)."""
    flags.DEFINE_string("source", None, "Image-folder dataset with train/ and test/.")
    flags.DEFINE_string("out", "/tmp/label_demo", "Scratch folder (images, project, model).")
    flags.DEFINE_integer("num_images", 2000, "Training images to copy (same per class).")
    flags.DEFINE_integer("per_round", 100, "Images per round.")
    flags.DEFINE_integer("rounds", 3, "Rounds.")
    flags.DEFINE_integer("seed", 0, "Which images are copied, and the project's seed.")
    flags.DEFINE_list(
        "settings",
        [],
        "More init flags (default: none, the labeling defaults). The paper's setting of the "
        "README: --features=rotation,--method=bal,--classifier=vgg,--width=0.125,"
        "--pretext_epochs=12,--pretext_milestones=9,--epochs=30,--batch_size=32,--milestones=24",
    )


def _copy_images(source: str, out: str, num: int, seed: int) -> tuple[list[str], dict]:
    train = os.path.join(source, "train")
    classes = sorted(d for d in os.listdir(train) if not d.startswith("."))
    per_class = num // len(classes)
    rng = np.random.default_rng(seed)
    files = []
    for c in classes:
        names = sorted(os.listdir(os.path.join(train, c)))
        files += [(os.path.join(train, c, n), c) for n in rng.choice(names, per_class, False)]
    rng.shuffle(files)
    images = os.path.join(out, "images")
    os.makedirs(images)
    truth = {}
    for n, (path, c) in enumerate(files):
        name = f"img_{n:05d}{os.path.splitext(path)[1]}"
        shutil.copy(path, os.path.join(images, name))
        truth[name] = c
    with open(os.path.join(out, "truth.json"), "w") as f:
        json.dump(truth, f)
    return classes, truth


def _run(args: list[str], times: dict, name: str) -> str:
    cmd = [sys.executable, "-m", "experiments.label", *args]
    print("$ python -m experiments.label " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    times[name] = time.perf_counter() - t0
    progress = [ln for ln in proc.stdout.splitlines() if "pretext [" in ln]
    lines = [ln for ln in proc.stdout.splitlines() if "pretext [" not in ln]
    lines[1:1] = progress[-1:]  # only the last progress bar
    print("\n".join("    " + ln for ln in lines[-12:]), flush=True)
    if proc.returncode:
        sys.exit(f"command failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def _annotate(workdir: str, r: int, truth: dict, out: str) -> tuple[str, list[str]]:
    with open(os.path.join(workdir, "rounds", f"{r:02d}", "to_label.csv")) as f:
        ids = [row["id"] for row in csv.DictReader(f)]
    path = os.path.join(out, f"round{r}_labels.csv")
    with open(path, "w") as f:
        f.write("id,label\n" + "".join(f"{i},{truth[i]}\n" for i in ids))
    return path, ids


def main(argv):
    del argv
    if flags.FLAGS.source is None:
        raise app.UsageError("--source is required")
    out = os.path.abspath(flags.FLAGS.out)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    t0 = time.perf_counter()
    classes, truth = _copy_images(flags.FLAGS.source, out, flags.FLAGS.num_images, flags.FLAGS.seed)
    print(f"copied {len(truth)} images into {out}/images in {time.perf_counter() - t0:.1f}s")
    p = f"--workdir={out}/project"
    times: dict[str, float] = {}
    _run(
        [
            "init",
            f"--images={out}/images",
            p,
            f"--classes={','.join(classes)}",
            f"--per_round={flags.FLAGS.per_round}",
            f"--rounds={flags.FLAGS.rounds}",
            f"--seed={flags.FLAGS.seed}",
            *flags.FLAGS.settings,
        ],
        times,
        "init",
    )
    hists = []
    for r in range(flags.FLAGS.rounds):
        _run(["next", p], times, f"next {r}")
        labels, ids = _annotate(f"{out}/project", r, truth, out)
        hist = {c: sum(truth[i] == c for i in ids) for c in classes}
        hists.append(hist)
        print(f"    round {r} picks by true class: {hist}")
        _run(["import", p, f"--labels={labels}"], times, f"import {r}")
    _run(["status", p], times, "status")
    _run(["export", p, f"--out={out}/model"], times, "export")
    pred = _run(
        [
            "predict",
            f"--model={out}/model",
            f"--images={flags.FLAGS.source}/test",
            f"--out={out}/p.csv",
        ],
        times,
        "predict",
    )
    print("\n| round | next s | import s | " + " | ".join(classes) + " |")
    print("|---|---|---|" + "---|" * len(classes))
    for r, h in enumerate(hists):
        cells = " | ".join(str(h[c]) for c in classes)
        print(f"| {r} | {times[f'next {r}']:.1f} | {times[f'import {r}']:.1f} | {cells} |")
    print(
        f"\ninit {times['init']:.1f}s, status {times['status']:.1f}s, export "
        f"{times['export']:.1f}s, predict {times['predict']:.1f}s; total "
        f"{time.perf_counter() - t0:.0f}s"
    )
    print([ln for ln in pred.splitlines() if "accuracy" in ln][-1:])


if __name__ == "__main__":
    define_flags()
    app.run(main)
