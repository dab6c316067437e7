"""Labeling project pieces without training: label files, journal, pool scans, one-time checks."""

import dataclasses
import json
import os

import numpy as np
import PIL.Image
import pytest

from bal_jax.labeling import config as config_lib
from bal_jax.labeling import formats, journal
from bal_jax.labeling import pool as pool_lib
from bal_jax.labeling.config import LabelingError


def _png(path, value, size=40):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.Image.fromarray(np.full((size, size), value, np.uint8), "L").save(path)


# ----------------------------------------------------------------------------- formats
@pytest.mark.parametrize("ref", ["id", "path"])
def test_csv_reads_id_or_path_column_and_ignores_extra_columns(tmp_path, ref):
    f = tmp_path / "l.csv"
    f.write_text(f"{ref},label,confidence\na.jpg, cat ,0.3\nb.jpg,,0.1\n")
    rows = formats.read_labels(str(f))
    assert rows.kind == "csv"
    assert rows.rows == [("line 2", (ref, "a.jpg"), "cat"), ("line 3", (ref, "b.jpg"), "")]


def test_csv_without_the_expected_header_is_one_sentence(tmp_path):
    f = tmp_path / "l.csv"
    f.write_text("a.jpg,cat\nb.jpg,dog\n")
    with pytest.raises(formats.LabelFileError, match=r"header row naming the columns id,label"):
        formats.read_labels(str(f))


def test_label_studio_json_min_and_folder_tree(tmp_path):
    picks = [
        formats.Pick("x/a.png", "/data/x/a.png", "cat", 0.4),
        formats.Pick("b.png", "/data/b.png", None, None),
    ]
    tasks = tmp_path / "tasks.json"
    formats.write_label_studio_tasks(str(tasks), picks, project_id="p1", round_index=1)
    written = json.loads(tasks.read_text())
    assert written[0]["predictions"][0]["score"] == 0.4
    assert written[0]["predictions"][0]["result"][0]["value"] == {"choices": ["cat"]}
    assert "predictions" not in written[1]
    # A Label Studio export: tasks with annotations; one cancelled, one task left undone.
    export = [
        dict(written[0], annotations=[{"result": written[0]["predictions"][0]["result"]}]),
        dict(written[1], annotations=[{"was_cancelled": True, "result": []}]),
    ]
    f = tmp_path / "export.json"
    f.write_text(json.dumps(export))
    rows = formats.read_labels(str(f))
    assert rows.kind == "label_studio" and rows.projects == {"p1"} and rows.unannotated == 1
    assert rows.rows == [("task 0", ("id", "x/a.png"), "cat")]
    minimal = [{"image": "/data/local-files/?d=data/b.png", "id": 7, "choice": "dog"}]
    f.write_text(json.dumps(minimal))
    rows = formats.read_labels(str(f))
    assert rows.kind == "label_studio_min"
    assert rows.rows == [("task 7", ("path", "/data/b.png"), "dog")]
    _png(str(tmp_path / "tree" / "cat" / "a.png"), 3)
    rows = formats.read_labels(str(tmp_path / "tree"))
    assert rows.rows == [("cat/a.png", ("file", str(tmp_path / "tree" / "cat" / "a.png")), "cat")]
    assert 'name="choice" toName="image"' in formats.label_studio_config(["a", 'b"c'])


# ----------------------------------------------------------------------------- journal
def test_journal_is_idempotent_keeps_history_and_is_all_or_nothing(tmp_path, monkeypatch):
    j = journal.Journal(str(tmp_path / "journal.jsonl"))
    assert j.append({"a": "cat", "b": "dog"}, source="one")["seq"] == 0
    assert j.append({"a": "cat", "b": "dog"}, source="one again") is None
    entry = j.append({"a": "dog", "c": "cat"}, source="two")
    assert entry["labels"] == {"a": "dog", "c": "cat"} and entry["relabeled"] == ["a"]
    assert j.labels() == {"a": "dog", "b": "dog", "c": "cat"}
    before = (tmp_path / "journal.jsonl").read_bytes()

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(journal.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        j.append({"d": "cat"}, source="killed")
    assert (tmp_path / "journal.jsonl").read_bytes() == before
    assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp")] == []


# ----------------------------------------------------------------------------- pool
def test_pool_notices_added_removed_changed_and_unreadable_files(tmp_path):
    root = str(tmp_path / "imgs")
    _png(f"{root}/a.png", 10)
    _png(f"{root}/sub/b.PNG", 20, size=64)  # any size and letter case; resized
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    pool, change = pool_lib.update_pool(
        pool_lib.empty_pool(32), root, pool_lib.scan_folder(root), image_size=32
    )
    assert pool.ids_N.tolist() == ["a.png", "sub/b.PNG"] and change.added == pool.ids_N.tolist()
    assert pool.images_NHWC.shape == (2, 32, 32, 3) and pool.images_NHWC[1].min() == 20
    _png(f"{root}/c.jpg", 30)
    (tmp_path / "imgs" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    os.remove(f"{root}/a.png")
    _png(f"{root}/sub/b.PNG", 99, size=64)
    pool2, change = pool_lib.update_pool(pool, root, pool_lib.scan_folder(root), image_size=32)
    assert change.added == ["c.jpg"] and change.removed == ["a.png"]
    assert change.changed == ["sub/b.PNG"] and [u for u, _ in change.unreadable] == ["bad.png"]
    assert pool2.ids_N.tolist() == ["c.jpg", "sub/b.PNG"] and pool2.images_NHWC[1].min() == 99
    # A rescan of an unchanged folder decodes nothing and reports the unreadable file again.
    pool3, change = pool_lib.update_pool(pool2, root, pool_lib.scan_folder(root), image_size=32)
    assert not change.any and [u for u, _ in change.unreadable] == ["bad.png"]
    assert pool3.hashes_N.tolist() == pool2.hashes_N.tolist()


# ----------------------------------------------------------------------------- config
def test_beta_defaults_to_the_released_value_per_budget():
    beta, why = config_lib.choose_beta(None, budget="small", counts=(20,) * 5, pool_size=1000)
    assert beta == 0.75 and "small budget" in why
    beta, why = config_lib.choose_beta(None, budget=None, counts=(100,) * 3, pool_size=1000)
    assert beta == 1.3 and "medium" in why  # 30% labeled at the end: medium
    assert config_lib.choose_beta(2.0, budget=None, counts=(10,), pool_size=100)[0] == 2.0
    with pytest.raises(LabelingError, match="below its minimum"):
        config_lib.choose_beta(0.1, budget=None, counts=(50, 50), pool_size=100)


def test_budget_and_class_folder_checks():
    with pytest.raises(LabelingError, match="fewer than one round of 10"):
        config_lib.round_counts(budget="small", per_round=10, rounds=2, pool_size=5, unlabeled=5)
    with pytest.raises(LabelingError, match="exceeds the 15 unlabeled"):
        config_lib.round_counts(budget="small", per_round=10, rounds=2, pool_size=15, unlabeled=15)
    ids = ["cat/1.jpg", "dog/2.jpg", "3.jpg"]
    classes, rows = config_lib.folder_classes("D", ids, None, None)
    assert classes == ["cat", "dog"] and [r[2] for r in rows] == ["cat", "dog"]
    classes, rows = config_lib.folder_classes("D", ["batch1/1.jpg"], ("cat", "dog"), None)
    assert rows == []  # folders that name no class are just folders
    with pytest.raises(LabelingError, match="also junk, which are not in --classes"):
        config_lib.folder_classes("D", [*ids, "junk/4.jpg"], ("cat", "dog"), None)
    with pytest.raises(LabelingError, match="no classes known"):
        config_lib.folder_classes("D", ["1.jpg"], None, None)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(per_round=10), "give per_round with rounds"),
        (dict(classes=("a", "a")), "a class is listed twice"),
        (dict(main=config_lib.DEFAULT_MAIN._replace(milestones=(5, 3))), "--milestones must be"),
    ],
)
def test_bad_settings_are_refused_before_any_work(change, message):
    with pytest.raises(LabelingError, match=message):
        dataclasses.replace(config_lib.ProjectConfig(), **change).check()
