"""LabelingProject end to end on digits written as PNG files, at toy size.

A scripted annotator labels three rounds; kills between rounds and inside `next` resume to
the same picks; the runner's BAL cycle picks the same images; bad input is refused in one
sentence and nothing is lost.
"""

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import PIL.Image
import pytest
from sklearn import datasets

from bal_jax.active_loop import (
    ModelSpec,
    Split,
    TrainSettings,
    run_cycles,
)
from bal_jax.features import pretext_outputs
from bal_jax.keys import named_key
from bal_jax.labeling import (
    LabelingError,
    LabelingProject,
    ProjectConfig,
    featurize,
    formats,
    models,
)
from bal_jax.labeling.config import PAPER_SETTING
from bal_jax.methods import SelectionContext, bal_order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_IMAGES = 120
TINY = ProjectConfig(
    classes=tuple("0123456789"),
    per_round=10,
    rounds=3,
    width=0.0625,
    pretext=TrainSettings(epochs=1, batch_size=32, learning_rate=0.1, eval_batch_size=128),
    main=TrainSettings(epochs=1, batch_size=16, learning_rate=0.05, eval_batch_size=128),
    cv_folds=3,  # folds fit on 20 labels: the shape round 2 compiled
    **PAPER_SETTING,  # rotation network, the paper's BAL, VGG16 (compared with the runner)
)


def write_digits(root, start, count, *, class_folders=False):
    """Writes scikit-learn digits as 32x32 grey PNGs; returns {relative path: true label}."""
    bunch = datasets.load_digits()
    truth = {}
    for i in range(start, start + count):
        img = np.round(bunch.images[i] * 255 / 16).astype(np.uint8)
        img = PIL.Image.fromarray(img, "L").resize((32, 32), PIL.Image.Resampling.BILINEAR)
        rel = f"{bunch.target[i]}/d{i:04d}.png" if class_folders else f"d{i:04d}.png"
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        img.save(os.path.join(root, rel))
        truth[rel] = str(bunch.target[i])
    return truth


def annotate(rnd, truth, path):
    """The scripted annotator: the round's to_label.csv with the true labels filled in."""
    with open(rnd.csv_path) as f:
        rows = list(csv.DictReader(f))
    with open(path, "w") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow(dict(r, label=truth[r["id"]]))
    return str(path)


def quiet(line):
    del line


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    return str(root), write_digits(str(root), 0, NUM_IMAGES)


@pytest.fixture(scope="module")
def base_project(images, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("proj") / "base")
    LabelingProject.create(workdir, images=images[0], config=TINY, log=quiet)
    return workdir


def _copy(base, tmp_path, name="proj"):
    return shutil.copytree(base, str(tmp_path / name))


def _three_rounds(workdir, truth, tmp_path, before_next=None):
    picks = []
    for r in range(3):
        if before_next:
            before_next(r)
        rnd = LabelingProject.open(workdir, log=quiet).next_round()  # a fresh process per step
        picks.append([p.id for p in rnd.picks])
        LabelingProject.open(workdir, log=quiet).import_labels(
            annotate(rnd, truth, tmp_path / f"r{r}.csv")
        )
    return picks


@pytest.fixture(scope="module")
def clean_rounds(base_project, images, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clean")
    workdir = _copy(base_project, tmp)
    return workdir, _three_rounds(workdir, images[1], tmp)


def test_three_rounds_with_a_scripted_annotator(clean_rounds, images, tmp_path):
    workdir, picks = clean_rounds
    project = LabelingProject.open(workdir, log=quiet)
    everything = [i for p in picks for i in p]
    assert [len(p) for p in picks] == [10, 10, 10]
    assert len(set(everything)) == 30
    assert set(project.labels()) == set(everything)  # labeled set = union of the rounds
    assert project.labels() == {i: images[1][i] for i in everything}
    with open(os.path.join(workdir, "rounds", "01", "to_label.csv")) as f:
        row = next(csv.DictReader(f))
    assert row["suggested_label"] in TINY.classes and 0 < float(row["confidence"]) <= 1
    with pytest.raises(LabelingError, match="all 3 rounds of the budget are picked"):
        project.next_round()
    status = project.status()
    assert [r["labeled"] for r in status["rounds"]] == [10, 10, 10]
    assert sum(status["per_class"].values()) == 30 and status["cv"]["folds"] == 3
    assert 0.0 <= status["cv"]["mean"] <= 1.0
    meta = project.export(str(tmp_path / "model"))
    assert meta["num_labels"] == 30 and meta["classes"] == list(TINY.classes)
    test_dir = str(tmp_path / "test")
    write_digits(test_dir, 1000, 20, class_folders=True)
    out = models.predict_folder(
        str(tmp_path / "model"), test_dir, out=str(tmp_path / "p.csv"), batch_size=128
    )
    assert out["num_images"] == out["num_with_truth"] == 20 and 0 <= out["accuracy"] <= 1
    with open(tmp_path / "p.csv") as f:
        assert len(list(csv.DictReader(f))) == 20


def test_kills_between_rounds_and_inside_next_resume_to_the_same_picks(
    base_project, clean_rounds, images, tmp_path, monkeypatch
):
    workdir = _copy(base_project, tmp_path)
    real = formats.write_label_studio_tasks
    original_save = models.save_model

    def kill_inside_next(r):
        if r == 0:
            return

        # Killed after the round's CSV is written, before its tasks and round.json: then
        # once more right after the classifier is saved.
        def killed(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(formats, "write_label_studio_tasks", killed)
        with pytest.raises(KeyboardInterrupt):
            LabelingProject.open(workdir, log=quiet).next_round()
        monkeypatch.setattr(formats, "write_label_studio_tasks", real)
        assert len(LabelingProject.open(workdir, log=quiet).rounds()) == r

        def save_then_die(*args, **kwargs):
            original_save(*args, **kwargs)
            raise KeyboardInterrupt

        shutil.rmtree(os.path.join(workdir, "models", f"round_{r:02d}"))
        monkeypatch.setattr(models, "save_model", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            LabelingProject.open(workdir, log=quiet).next_round()
        monkeypatch.setattr(models, "save_model", original_save)

    picks = _three_rounds(workdir, images[1], tmp_path, before_next=kill_inside_next)
    assert picks == clean_rounds[1]


def test_the_runner_picks_the_same_images(base_project, clean_rounds, images):
    """Same pool, seed and labels: LabelingProject and the runner's BAL cycle agree."""
    project = LabelingProject.open(clean_rounds[0], log=quiet)
    ids = project.pool.ids_N.tolist()
    labels = np.asarray([int(images[1][i]) for i in ids], np.int32)
    key = jax.random.key(TINY.seed)
    spec = ModelSpec(10, 3, TINY.width)
    outs = pretext_outputs(
        named_key(key, "pretext"),
        project.pool.images_NHWC,
        model=spec,
        settings=TINY.pretext,
        mean=project.mean,
        std=project.std,
    )
    np.testing.assert_allclose(outs.features_ND, project._features, rtol=1e-5, atol=1e-5)
    order = bal_order(named_key(key, "kmeans"), outs.features_ND, num_clusters=10)
    np.testing.assert_array_equal(order, project._order)
    records = run_cycles(
        key,
        method="bal",
        pool=Split(project.pool.images_NHWC, labels),
        evaluation=Split(project.pool.images_NHWC[:16], labels[:16]),
        counts=project.counts,
        context=SelectionContext(bal_order=order, beta=project.state["beta"]),
        model=spec,
        settings=TINY.main,
        mean=project.mean,
        std=project.std,
        log=quiet,
    )
    runner = [[ids[n] for n in r["selected"]] for r in records]
    assert runner == clean_rounds[1]


def test_images_added_removed_changed_and_unreadable(base_project, images, tmp_path):
    root = shutil.copytree(images[0], str(tmp_path / "imgs"))
    truth = dict(images[1])
    workdir = _copy(base_project, tmp_path)
    # Point the copy at its own images folder (a copy of the base project's; saves training).
    with open(os.path.join(workdir, "state.json")) as f:
        state = json.load(f)
    with open(os.path.join(workdir, "state.json"), "w") as f:
        json.dump(dict(state, images=root), f)
    lines = []
    truth.update(write_digits(root, NUM_IMAGES, 4))
    with open(os.path.join(root, "broken.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 truncated")
    project = LabelingProject.open(workdir, log=lines.append)
    assert project.pool.ids_N.shape == (124,) and project._order.shape == (124,)
    assert any("4 new image(s) joined the pool" in s for s in lines)
    assert any("features of 4 image(s)" in s and "CDD order recomputed" in s for s in lines)
    assert any("skipped 1 unreadable image(s): broken.jpg" in s for s in lines)
    rnd = project.next_round()
    project.import_labels(annotate(rnd, truth, tmp_path / "r0.csv"))
    gone = [p.id for p in rnd.picks[:2]]
    for i in gone:
        os.remove(os.path.join(root, i))
    unpicked = sorted(set(truth) - set(project.labels()) - set(gone))[0]
    PIL.Image.fromarray(np.zeros((32, 32), np.uint8)).save(os.path.join(root, unpicked))
    lines.clear()
    project = LabelingProject.open(workdir, log=lines.append)
    assert any("2 image(s) left" in s and "labels stay in the journal" in s for s in lines)
    assert any(f"changed content: {unpicked}" in s for s in lines)
    assert project.pool.ids_N.shape == (122,) and project._order.shape == (122,)
    assert set(gone) <= set(project.labels())
    status = project.status(cv=False)
    assert status["labels_of_removed_images"] == 2 and status["labeled"] == 8


def test_bad_input_is_one_sentence_and_nothing_is_lost(base_project, images, tmp_path):
    workdir = _copy(base_project, tmp_path)
    project = LabelingProject.open(workdir, log=quiet)
    journal = os.path.join(workdir, "journal.jsonl")
    rnd = project.next_round()
    with pytest.raises(LabelingError, match="round 0 still has 10 image"):
        project.next_round()
    ids = [p.id for p in rnd.picks]

    def refused(text, match, name="bad.csv"):
        f = tmp_path / name
        f.write_text(text)
        before = open(journal).read() if os.path.exists(journal) else None
        with pytest.raises(LabelingError, match=match):
            project.import_labels(str(f))
        assert (open(journal).read() if os.path.exists(journal) else None) == before

    refused(f"id,label\n{ids[0]},3\nnope.png,4\n", r"1 unknown image\(s\): line 3 \(nope.png\)")
    refused("id,label\nx.png,3\ny.png,4\n", "is it another project's file")
    refused(f"id,label\n{ids[0]},cat\n", r"unknown class\(es\) cat .*--add_classes")
    refused(f"id,label\n{ids[0]},3\n{ids[0]},4\n", "conflicting labels")
    refused(f"id,label\n{ids[0]},\n", r"1 empty label\(s\): line 2")
    refused(f"{ids[0]},3\n", "header row naming the columns")
    ls = [{"data": {"bal_id": ids[0], "bal_project": "other"}, "annotations": []}]
    refused(json.dumps(ls), "was written for project other", "ls.json")
    # The same labels as Label Studio JSON, JSON_MIN and a class-folder tree.
    truth = images[1]
    ls = [
        {
            "data": {"bal_id": i, "bal_project": project.state["project_id"]},
            "annotations": [{"result": [{"type": "choices", "value": {"choices": [truth[i]]}}]}],
        }
        for i in ids[:4]
    ]
    (tmp_path / "ls.json").write_text(json.dumps(ls))
    assert len(project.import_labels(str(tmp_path / "ls.json"))["labels"]) == 4
    minimal = [{"image": f"{images[0]}/{i}", "choice": truth[i]} for i in ids[4:7]]
    (tmp_path / "min.json").write_text(json.dumps(minimal))
    assert len(project.import_labels(str(tmp_path / "min.json"))["labels"]) == 3
    for i in ids[7:]:
        dest = tmp_path / "tree" / truth[i] / f"copy_{i}"
        os.makedirs(dest.parent, exist_ok=True)
        shutil.copy(os.path.join(images[0], i), dest)
    assert len(project.import_labels(str(tmp_path / "tree"))["labels"]) == 3
    assert project.import_labels(str(tmp_path / "ls.json")) is None  # re-import: no change
    assert project.labels() == {i: truth[i] for i in ids}
    (tmp_path / "new.csv").write_text(f"id,label\n{ids[0]},ten\n")
    entry = project.import_labels(str(tmp_path / "new.csv"), add_classes=True)
    assert entry["relabeled"] == [ids[0]] and project.classes[-1] == "ten"
    assert len(project.journal.entries()) == 4  # every label ever imported is still there


def test_init_refusals_and_resume(base_project, images, tmp_path, monkeypatch):
    with pytest.raises(LabelingError, match="holds no images"):
        os.makedirs(tmp_path / "empty")
        LabelingProject.create(str(tmp_path / "p1"), images=str(tmp_path / "empty"), config=TINY)
    few = str(tmp_path / "few")
    write_digits(few, 0, 6)
    with pytest.raises(LabelingError, match="6 unlabeled readable images, fewer than one round"):
        LabelingProject.create(str(tmp_path / "p2"), images=few, config=TINY)
    other = dataclasses.replace(TINY, width=0.125)
    with pytest.raises(LabelingError, match=r"different configuration \(differs in: width\)"):
        LabelingProject.create(base_project, images=images[0], config=other)
    folders = str(tmp_path / "folders")
    write_digits(folders, 0, 30, class_folders=True)
    os.makedirs(os.path.join(folders, "junk"))
    shutil.copy(os.path.join(images[0], "d0000.png"), os.path.join(folders, "junk"))
    with pytest.raises(LabelingError, match="also junk, which are not in --classes"):
        LabelingProject.create(str(tmp_path / "p3"), images=folders, config=TINY)
    # Killed after pretext training, before the features are stored: init resumes.
    shutil.rmtree(os.path.join(folders, "junk"))
    write_digits(folders, 30, NUM_IMAGES - 30)  # unlabeled images beside the class folders
    small = dataclasses.replace(TINY, per_round=2, rounds=2)
    real = featurize._network_features

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(featurize, "_network_features", killed)
    with pytest.raises(KeyboardInterrupt):
        LabelingProject.create(str(tmp_path / "p4"), images=folders, config=small, log=quiet)
    monkeypatch.setattr(featurize, "_network_features", real)
    lines = []
    project = LabelingProject.create(
        str(tmp_path / "p4"), images=folders, config=small, log=lines.append
    )
    assert not any("pretext: rotation network" in s for s in lines)  # not trained again
    assert len(project.labels()) == 30 and project._order.shape == (NUM_IMAGES,)
    # Through the command line: an unfinished init, and other settings, are refused.
    for args, message in [
        (["next", f"--workdir={tmp_path / 'p1'}"], "is not a labeling project (run init first)"),
        (["status", f"--workdir={base_project}", "--epochs=7"], "(differs in: main)"),
    ]:
        cmd = [sys.executable, "-m", "experiments.label", *args]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and proc.stderr.startswith("error:"), proc.stderr
        assert message in proc.stderr
