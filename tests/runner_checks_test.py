"""Runner refusals and outputs of issue 13 (items 9, 11, 13, 15, 16), in process and fast."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import PIL.Image
import pytest

from bal_jax.active_loop import Split
from bal_jax.data import cache
from bal_jax.data.pools import ActiveSplits
from experiments import config as config_lib
from experiments import pipeline, report
from experiments.pipeline import ConfigError, make_plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = dict(width=0.0625, pretext_epochs=1, epochs=1, train_subset=300, test_subset=20)


def _digits(**changes):
    return config_lib.override(config_lib.digits_cpu(), **(TOY | changes))


@pytest.fixture
def no_pretext(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("pretext training started before the refusal")

    monkeypatch.setattr(pipeline, "pretext_outputs", refuse)


def _one_class_folder(root):
    for split in ("train", "test"):
        os.makedirs(root / split / "only")
        for i in range(12):
            PIL.Image.fromarray(np.full((32, 32, 3), i, np.uint8)).save(
                root / split / "only" / f"{i}.png"
            )
    return f"folder:{root}"


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"num_clusters": 2000}, "--num_clusters=2000 exceeds the 100 images of the pool"),
        ({"beta_grid": (0.01, 0.02)}, "no --beta_grid candidate reaches the minimum beta"),
        ({"fractions_of": "train", "fractions": (0.5, 0.9)}, "use --fractions_of=pool"),
    ],
)
def test_late_failures_are_refused_before_pretext(tmp_path, no_pretext, changes, match):
    cfg = _digits(val_size=200, **changes)
    with pytest.raises(ConfigError, match=match):
        pipeline.run_experiment(cfg, str(tmp_path / "w"), log=lambda s: None)
    assert not os.path.exists(tmp_path / "w" / "seed0")


def test_single_class_folder_is_refused_before_pretext(tmp_path, no_pretext, monkeypatch):
    monkeypatch.setenv("BAL_JAX_CACHE", str(tmp_path / "cache"))
    cfg = _digits(dataset=_one_class_folder(tmp_path / "one"), train_subset=None, val_size=2)
    cfg = dataclasses.replace(cfg, test_subset=None)
    with pytest.raises(ConfigError, match="the dataset has 1 class; BAL needs at least 2"):
        pipeline.run_experiment(cfg, str(tmp_path / "w"), log=lambda s: None)


def test_unwritable_workdir_is_one_sentence(tmp_path, no_pretext):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"cannot write to the workdir .*file/run"):
        pipeline.run_experiment(_digits(), str(blocker / "run"), log=lambda s: None)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(ConfigError, match="cannot write to the workdir"):
            pipeline.run_experiment(_digits(), str(ro), log=lambda s: None)


def test_pretext_cache_key_holds_the_code_version(tmp_path, monkeypatch):
    cfg = _digits()
    first = pipeline.pretext_cache_dir(cfg, str(tmp_path))
    with open(os.path.join(first, "settings.json")) as f:
        settings = json.load(f)
    assert settings["pretext_code_version"] == pipeline.PRETEXT_CODE_VERSION
    assert settings["pretext_feature"] == "upright" and settings["augment"] == "crop"
    monkeypatch.setattr(pipeline, "PRETEXT_CODE_VERSION", pipeline.PRETEXT_CODE_VERSION + 1)
    assert pipeline.pretext_cache_dir(cfg, str(tmp_path)) != first


def test_cached_features_of_other_images_are_computed_again(tmp_path):
    """The cache folder is keyed by settings; the file also records which images (ids and
    order, validation and test bytes) it was computed on, so a dataset read from another
    source (a tfds copy, a prepared file) never reuses features of other images."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 4, 4, 1), dtype=np.uint8)
    split = Split(images, np.arange(6) % 2)
    d = ActiveSplits("toy", split, split, split, np.arange(6), ("a", "b"), (0.5,), (0.2,))
    path = str(tmp_path / "seed0.npz")
    lines = []
    assert pipeline._cached(path, d, lines.append) is None  # nothing cached yet
    pipeline._save_npz(path, features=np.ones((6, 2)), images=pipeline._images_digest(d))
    assert pipeline._cached(path, d, lines.append)["features"].shape == (6, 2)
    reordered = dataclasses.replace(d, pool_ids=np.arange(6)[::-1])
    assert pipeline._cached(path, reordered, lines.append) is None
    other_test = dataclasses.replace(d, test=Split(255 - images, split.labels))
    assert pipeline._cached(path, other_test, lines.append) is None
    assert len(lines) == 2 and "computed on other images" in lines[0]
    # A file written before the record existed is trusted, as before.
    pipeline._save_npz(path, features=np.ones((6, 2)))
    assert pipeline._cached(path, reordered, lines.append) is not None


def test_pretext_cache_key_separates_pretext_settings_not_budgets_or_seeds(tmp_path):
    # What the pretext network depends on makes a new folder; the budget, the methods and the
    # main-task schedule do not (the runner test shows a second run loading the features).
    base = pipeline.pretext_cache_dir(_digits(), str(tmp_path))
    for same in (
        dict(budget="medium"),
        dict(fractions=(0.05, 0.1)),
        dict(methods=("pt4al",)),
        dict(epochs=7),
    ):
        assert pipeline.pretext_cache_dir(_digits(**same), str(tmp_path)) == base, same
    for other in (
        dict(pretext_epochs=2),
        dict(width=0.125),
        dict(pretext="patches"),
        dict(pretext_feature="random_rotation"),
        dict(augment="crop_flip"),
    ):
        assert pipeline.pretext_cache_dir(_digits(**other), str(tmp_path)) != base, other


def test_output_files_get_the_usual_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        report.atomic_write(str(tmp_path / "summary.md"), "x\n")
        assert cache.save_npz(str(tmp_path / "c" / "a.npz"), {"a": np.zeros(2)})
        pipeline._save_npz(str(tmp_path / "seed0.npz"), a=np.zeros(2))
        records = [
            {"method": "bal", "cycle": 0, "accuracy": 0.5, "fraction": 0.1, "seed": 0},
        ]
        report.plot_curves(records, str(tmp_path / "curves.png"), title="t")
    finally:
        os.umask(old)
    for name in ("summary.md", "c/a.npz", "seed0.npz", "curves.png"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o644, name
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_stray_positional_argument_is_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.main", "--dataset=digits", "stray"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "error: unexpected arguments ['stray']; flags are --name=value (see --help)"
    ]


def test_resumed_beta_search_logs_the_total_time(tmp_path):
    cfg = _digits(beta_grid=(1.0, 2.0), fractions=(0.1, 0.2))
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (100, 32, 32, 1), dtype=np.uint8), np.arange(100) % 10)
    d = ActiveSplits(
        "digits", split, split, split, np.arange(100), tuple("0123456789"), (0.5,), (0.2,)
    )
    plan = make_plan(cfg, pool_size=100, val_size=100, num_classes=10)
    seed_dir = tmp_path / "seed0"
    seed_dir.mkdir()
    state = {"scores": {"1.0": 0.3, "2.0": 0.4}, "seconds": 12.3}
    (seed_dir / "beta.json").write_text(json.dumps(state))
    lines = []
    context = pipeline.SelectionContext(bal_order=np.arange(100), bal_options=plan.bal_options(cfg))
    beta, new_state = pipeline._search_beta(
        cfg, d, plan, jax.random.key(0), context, str(seed_dir), None, None, lines.append
    )
    assert beta == 2.0 and new_state["seconds"] == pytest.approx(12.3, abs=0.05)
    assert "search 12.3s in all" in lines[-1]
