"""Labeling tool: bad files, case-only class names, removed images, unfinished exports.

Projects here are made by `LabelingProject.create` with the pretext step stubbed out: the
store (pool, journal, imports) is real, nothing is trained.
"""

import json
import os
import stat
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import PIL.Image
import pytest
from flax import nnx

from bal_jax import atomic
from bal_jax.labeling import LabelingError, LabelingProject, ProjectConfig, formats, models
from bal_jax.labeling.store import ProjectStore, save_npz, write_json
from bal_jax.models import VGG16

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = ProjectConfig(classes=("cat", "dog"), per_round=1, rounds=1)
NAMES = ("a.png", "b.png", "c.png", "d.png", "e.png", "f.png")
NOT_TEXT = {
    "jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01",
    "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    "utf16_csv": "id,label\na.png,cat\n".encode("utf-16"),
}


def _png(path, value):
    PIL.Image.fromarray(np.full((32, 32), value, np.uint8), "L").save(path)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """(workdir, images folder, log lines) of a project over six tiny PNGs, no pretext."""
    images = tmp_path / "imgs"
    images.mkdir()
    for n, name in enumerate(NAMES):
        _png(images / name, 40 * n)
    monkeypatch.setattr(LabelingProject, "_ensure_features", lambda self, progress: None)
    lines = []
    workdir = str(tmp_path / "proj")
    LabelingProject.create(workdir, images=str(images), config=CONFIG, log=lines.append)
    return workdir, str(images), lines


def _journal(workdir):
    path = os.path.join(workdir, "journal.jsonl")
    return open(path).read() if os.path.exists(path) else None


def _refused(store, tmp_path, text, match, **kwargs):
    """Imports `text` as a CSV, expects LabelingError matching `match`; nothing written."""
    f = tmp_path / "labels.csv"
    f.write_text(text)
    before = _journal(store.workdir), store.classes, store.labels()
    with pytest.raises(LabelingError, match=match) as e:
        store.import_labels(str(f), **kwargs)
    assert (_journal(store.workdir), store.classes, store.labels()) == before
    return str(e.value)


# ----------------------------------------------------------------------------- 1: not text
@pytest.mark.parametrize("kind", sorted(NOT_TEXT))
def test_a_labels_file_that_is_not_utf8_text_is_one_sentence(project, tmp_path, kind):
    workdir, images, _ = project
    bad = tmp_path / "photo.csv"
    bad.write_bytes(NOT_TEXT[kind])
    with pytest.raises(formats.LabelFileError, match=rf"{bad} is not UTF-8 text, so not a labels"):
        formats.read_labels(str(bad))
    store = ProjectStore(workdir, log=lambda line: None)
    with pytest.raises(LabelingError, match=rf"{bad} is not UTF-8 text") as e:
        store.import_labels(str(bad))
    assert "\n" not in str(e.value) and _journal(workdir) is None
    # init --labels= refuses it too, before any image is decoded.
    with pytest.raises(LabelingError, match="is not UTF-8 text"):
        LabelingProject.create(
            str(tmp_path / "other"), images=images, config=CONFIG, labels=str(bad)
        )
    assert not os.path.exists(tmp_path / "other" / "state.json")


# ----------------------------------------------------------------------------- 2: letter case
def test_a_label_differing_from_a_class_only_by_case_is_refused(project, tmp_path):
    workdir, _, _ = project
    store = ProjectStore(workdir, log=lambda line: None)
    (tmp_path / "first.csv").write_text("id,label\na.png,cat\n")
    store.import_labels(str(tmp_path / "first.csv"))
    for add_classes in (True, False):
        message = _refused(
            store,
            tmp_path,
            "id,label\na.png,Cat\nb.png,dog\n",
            r"'Cat' \(line 2\) and the class 'cat'",
            add_classes=add_classes,
        )
        assert "--add_classes" not in message
    # Two new labels spelled two ways: neither becomes a class.
    _refused(
        store,
        tmp_path,
        "id,label\nc.png,Bird\nd.png,bird\n",
        r"'bird' \(line 3\) and 'Bird' \(line 2\)",
        add_classes=True,
    )
    assert store.classes == ["cat", "dog"] and store.labels() == {"a.png": "cat"}
    (tmp_path / "ok.csv").write_text("id,label\nc.png,Bird\nd.png,Bird\nb.png,dog\n")
    store.import_labels(str(tmp_path / "ok.csv"), add_classes=True)
    assert store.classes == ["cat", "dog", "Bird"]


# ----------------------------------------------------------------------------- 3: removed
@pytest.mark.parametrize("record", ["pool_history", "journal_only"])
def test_labels_of_removed_images_blame_the_removal_not_the_file(project, tmp_path, record):
    workdir, images, _ = project
    lines = []
    store = ProjectStore(workdir, log=lines.append)
    (tmp_path / "first.csv").write_text("id,label\ne.png,cat\n")
    store.import_labels(str(tmp_path / "first.csv"))
    os.remove(os.path.join(images, "e.png"))  # labeled, then removed
    os.remove(os.path.join(images, "f.png"))  # never labeled
    with open(os.path.join(images, "d.png"), "wb") as f:  # replaced by a broken file
        f.write(b"\x89PNG\r\n\x1a\n truncated")
    ProjectStore(workdir, log=lines.append).sync()
    if record == "journal_only":  # a project folder from before the pool kept the record
        arrays = dict(np.load(os.path.join(workdir, "pool.npz")))
        arrays.pop("removed_ids", None)
        arrays.pop("removed_hashes", None)
        save_npz(os.path.join(workdir, "pool.npz"), arrays)
    store = ProjectStore(workdir, log=lines.append)
    message = _refused(
        store,
        tmp_path,
        "id,label\ne.png,dog\n",
        r"none of the 1 rows .* 1 of them name image\(s\) removed from the images folder .*"
        r"\(e\.g\. line 2 \(e\.png\)\)",
    )
    assert "another project" not in message
    unreadable = r"that are unreadable now \(e\.g\. line 2 \(d\.png"
    _refused(store, tmp_path, "id,label\nd.png,dog\n", unreadable)
    if record == "pool_history":
        _refused(store, tmp_path, "id,label\nf.png,dog\n", r"removed from the images folder")
    # Beside labels of images in the pool, rows of removed images are skipped, and said so.
    (tmp_path / "mixed.csv").write_text("id,label\na.png,cat\ne.png,dog\n")
    lines.clear()
    entry = store.import_labels(str(tmp_path / "mixed.csv"))
    assert entry["labels"] == {"a.png": "cat"} and store.labels()["e.png"] == "cat"
    assert any(
        "skipped 1 row(s) of images removed from the images folder" in s and "e.png" in s
        for s in lines
    ), lines
    # A file of another project's images is still called that.
    _refused(store, tmp_path, "id,label\nx.png,cat\n", "is it another project's file")


# ----------------------------------------------------------------------------- 4: export
def _net(seed):
    return VGG16(2, in_channels=3, width=0.0625, rngs=nnx.Rngs(seed))


def _params(net):
    return jax.tree.leaves(nnx.state(net, nnx.Param))


def test_export_replaces_the_earlier_one_only_when_complete(tmp_path, monkeypatch):
    out = str(tmp_path / "model")
    models.save_model(out, _net(0), meta={"num_classes": 2, "channels": 3, "width": 0.0625})

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ocp.StandardCheckpointer, "wait_until_finished", killed)
    with pytest.raises(KeyboardInterrupt):
        models.save_model(out, _net(1), meta={"num_classes": 2, "channels": 3, "width": 0.5})
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no temporary folder left
    net, meta = models.load_model(out)  # the earlier export, whole
    assert meta["width"] == 0.0625
    for a, b in zip(_params(net), _params(_net(0)), strict=True):
        np.testing.assert_array_equal(a, b)
    models.save_model(out, _net(1), meta={"num_classes": 2, "channels": 3, "width": 0.0625})
    assert sorted(os.listdir(tmp_path)) == ["model"]
    net, _ = models.load_model(out)
    for a, b in zip(_params(net), _params(_net(1)), strict=True):
        np.testing.assert_array_equal(a, b)
    assert stat.S_IMODE(os.stat(out).st_mode) == atomic.default_dir_mode()
    # A folder that is not a saved model is never replaced.
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(LabelingError, match="exists and is not a saved model"):
        models.save_model(str(tmp_path / "notes"), _net(0), meta={})
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_a_folder_without_a_complete_export_is_one_sentence(tmp_path):
    # What an interrupted export of the earlier save_model left: orbax's temporary folder.
    legacy = tmp_path / "legacy"
    (legacy / "checkpoint.orbax-checkpoint-tmp-1718000000").mkdir(parents=True)
    # What an interrupted first export leaves now: a temporary sibling, no folder.
    (tmp_path / ".tmp-fresh-abc123").mkdir()
    (tmp_path / "photos").mkdir()
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "model.json").write_text("{")
    cases = [
        ("legacy", r"the export to .*legacy did not finish \(it has no model.json\)"),
        ("fresh", r"the export to .*fresh did not finish; run export again"),
        ("photos", r"photos is not an exported model \(it has no model.json\)"),
        ("missing", r"missing does not exist, so it holds no exported model"),
        ("damaged", r"model.json is damaged; export the model again"),
    ]
    for name, match in cases:
        path = str(tmp_path / name)
        assert models.read_meta(path) is None
        with pytest.raises(LabelingError, match=match):
            models.load_model(path)
    # The predict command says the same in one line.
    cmd = [sys.executable, "-m", "experiments.label", "predict", f"--model={legacy}"]
    cmd += [f"--images={tmp_path / 'photos'}", f"--out={tmp_path / 'p.csv'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: the export to ") and "did not finish" in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr


# ----------------------------------------------------------------------------- writers
def test_label_writers_are_atomic_with_the_usual_mode(tmp_path, monkeypatch):
    path = str(tmp_path / "state.json")
    write_json(path, {"a": 1})
    formats.write_text(str(tmp_path / "to_label.csv"), "id,path\n")
    save_npz(str(tmp_path / "pool.npz"), {"x": np.arange(3)})
    for name in ("state.json", "to_label.csv", "pool.npz"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == atomic.default_file_mode()

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_json(path, {"a": 2})
    monkeypatch.undo()
    assert json.load(open(path)) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["pool.npz", "state.json", "to_label.csv"]


_SHOW_CONFIG = """
import sys
from absl import flags
from experiments import label
label.define_flags()
flags.FLAGS(sys.argv)
c = label.build_config(flags.FLAGS, label.ProjectConfig())
print(c.pretext.learning_rate, c.pretext.eval_batch_size, c.main.eval_batch_size,
      c.main.milestones, c.pretext.milestones, c.main.epochs, c.pretext.epochs)
"""


def test_training_flags_are_the_runners_mapped_onto_the_projects_stages():
    """experiments.label takes the runner's training flags (experiments.config.TRAIN_FLAGS):
    --eval_batch_size sets both stages, the pretext_ ones the pretext stage, the others the
    main model's; a value that does not parse is one sentence, before any work."""
    flags_given = ["--pretext_lr=0.3", "--eval_batch_size=64", "--milestones=3,5", "--epochs=7"]
    cmd = [sys.executable, "-c", _SHOW_CONFIG, *flags_given]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    default = ProjectConfig()
    assert proc.stdout.split() == [
        "0.3",
        "64",
        "64",
        "(3,",
        "5)",
        str(default.pretext.milestones).replace(" ", ""),
        "7",
        str(default.pretext.epochs),
    ]
    cmd = [sys.executable, "-m", "experiments.label", "init", "--pretext_milestones=a,b"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "error: --pretext_milestones must be comma-separated integers, got 'a,b'"
    )
