"""Labeling with the default setting (patch features, bal_herding, linear head) and with a
file of the user's own embeddings, end to end on digits PNGs at toy size."""

import dataclasses
import os
import shutil

import jax
import numpy as np
import pytest
from labeling_test import annotate, quiet, write_digits

from bal_jax import patch_features
from bal_jax.active_loop import ModelSpec, Split, TrainSettings, run_cycles
from bal_jax.keys import named_key
from bal_jax.labeling import LabelingError, LabelingProject, ProjectConfig
from bal_jax.labeling.config import LABELING_METHODS
from bal_jax.labeling.models import predict_folder
from bal_jax.learners import HeadFeatures
from bal_jax.methods import SelectionContext, bal_order

CONFIG = ProjectConfig(classes=tuple("0123456789"), per_round=10, rounds=3, cv_folds=3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    return str(root), write_digits(str(root), 0, 120)


def run_rounds(workdir, images, truth, config, tmp, rounds=3):
    project = LabelingProject.create(workdir, images=images, config=config, log=quiet)
    picks = []
    for r in range(rounds):
        rnd = project.next_round()
        picks.append([p.id for p in rnd.picks])
        project.import_labels(annotate(rnd, truth, os.path.join(tmp, f"r{r}.csv")))
    return project, picks


def test_default_setting_rounds_status_export_predict(folder, tmp_path):
    images, truth = folder
    assert (CONFIG.features, CONFIG.method, CONFIG.classifier) == (
        "patches",
        "bal_herding",
        "linear",
    )
    project, picks = run_rounds(str(tmp_path / "p"), images, truth, CONFIG, str(tmp_path))
    assert len({i for p in picks for i in p}) == 30
    assert project.head_features.shape == (120, 2, 1024)  # upright + mirror, 4 x 256 centres
    status = project.status()
    assert status["cv"]["num_labels"] == 30 and 0 <= status["cv"]["mean"] <= 1
    assert status["method"] == "bal_herding"
    project.export(str(tmp_path / "model"))
    # The export is self-contained: predict works with the project folder gone.
    shutil.rmtree(str(tmp_path / "p"))
    test_dir = str(tmp_path / "test")
    test_truth = write_digits(test_dir, 200, 60, class_folders=True)
    out = predict_folder(
        str(tmp_path / "model"), test_dir, out=str(tmp_path / "preds.csv"), log=quiet
    )
    assert out["num_images"] == len(test_truth) == out["num_with_truth"]
    # 30 labels of 10 digit classes: well above chance (0.1) and no single-class model.
    assert out["accuracy"] > 0.3
    with open(str(tmp_path / "preds.csv")) as f:
        predicted = {line.split(",")[1] for line in f.read().splitlines()[1:]}
    assert len(predicted) > 3


@pytest.fixture(scope="module")
def fit_once():
    """Every project of the folder learns the same patch dictionary (same key, same images):
    fit it once for the module (3.5 s each: K-means on 100,000 patches)."""
    fitted = {}
    original = patch_features.fit_patch_features

    def fit(key, images, **kw):
        name = (jax.random.key_data(key).tobytes(), images.tobytes(), tuple(sorted(kw.items())))
        if name not in fitted:
            fitted[name] = original(key, images, **kw)
        return fitted[name]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(patch_features, "fit_patch_features", fit)
        yield


@pytest.mark.parametrize("method", LABELING_METHODS)
def test_the_runners_linear_cycle_picks_the_same_images(folder, fit_once, tmp_path, method):
    """One cycle for both tools, every method a project can pick with: labeling rounds with
    the linear head pick what the runner's `run_cycles(head_features=...)` picks from the
    same pool, seed, labels and features, with the runner's own K-means order (checked equal
    to the project's) and the project's beta."""
    images, truth = folder
    config = dataclasses.replace(CONFIG, method=method, rounds=2)
    project, picks = run_rounds(str(tmp_path / "p"), images, truth, config, str(tmp_path), rounds=2)
    ids = project.pool.ids_N.tolist()
    labels = np.asarray([int(truth[i]) for i in ids], np.int32)
    pool = Split(project.pool.images_NHWC, labels)
    key = jax.random.key(config.seed)
    features = project._features
    order = bal_order(named_key(key, "kmeans"), features, num_clusters=10)
    np.testing.assert_array_equal(order, project._order)
    records = run_cycles(
        key,
        method=method,
        pool=pool,
        evaluation=Split(pool.images[:16], labels[:16]),
        counts=project.counts,
        context=SelectionContext(
            bal_order=order,
            pretext_features_ND=features,
            beta=project.state["beta"],
            probcover_clusters=10,
        ),
        model=ModelSpec(10, 3, config.width),
        settings=TrainSettings(epochs=1, batch_size=8, learning_rate=0.1),
        mean=project.mean,
        std=project.std,
        head_features=HeadFeatures(project.head_features, project.head_features[:16]),
        log=quiet,
    )
    assert [[ids[n] for n in r["selected"]] for r in records] == picks


def test_embeddings_file_gives_the_builtin_sources_picks(folder, tmp_path):
    """The patch features written to a file and given as --features=FILE pick what the
    built-in source picks (TypiClust reads only the selection features)."""
    images, truth = folder
    config = dataclasses.replace(CONFIG, method="typiclust")
    built, picks = run_rounds(str(tmp_path / "a"), images, truth, config, str(tmp_path), 2)
    emb = str(tmp_path / "emb.npz")
    np.savez(emb, ids=built.pool.ids_N, embeddings=built._features)
    from_file = dataclasses.replace(config, features=emb)
    _, file_picks = run_rounds(str(tmp_path / "b"), images, truth, from_file, str(tmp_path), 2)
    assert file_picks == picks


def test_simclr_features_are_the_runners_and_survive_export(folder, tmp_path):
    """--features=simclr trains the runner's SimCLR network (same key, same features), with
    Adam's default rate; the exported head classifies new images through it."""
    from bal_jax.features import SIMCLR_LR, pretext_outputs
    from bal_jax.keys import named_key

    images, truth = folder
    pretext = TrainSettings(epochs=1, batch_size=32, learning_rate=SIMCLR_LR, eval_batch_size=128)
    config = dataclasses.replace(CONFIG, features="simclr", width=0.0625)
    assert config.pretext.learning_rate == SIMCLR_LR  # not the rotation network's SGD rate
    config = dataclasses.replace(config, pretext=pretext, method="margin")
    project, _ = run_rounds(str(tmp_path / "p"), images, truth, config, str(tmp_path), 1)
    outs = pretext_outputs(
        named_key(jax.random.key(config.seed), "pretext"),
        project.pool.images_NHWC,
        model=ModelSpec(4, 3, config.width),
        settings=pretext,
        mean=project.mean,
        std=project.std,
        pretext="simclr",
    )
    np.testing.assert_allclose(outs.features_ND, project._features, rtol=1e-5, atol=1e-5)
    out = str(tmp_path / "model")
    project.export(out)
    preds = str(tmp_path / "preds.csv")
    predict_folder(out, images, out=preds)
    with open(preds) as f:
        assert sum(1 for _ in f) == 121  # header + every image


def test_embeddings_file_is_checked_before_any_work(folder, tmp_path):
    images, _ = folder
    emb = str(tmp_path / "emb.npz")
    ids = sorted(os.listdir(images))
    np.savez(emb, ids=np.asarray(ids[1:]), embeddings=np.zeros((len(ids) - 1, 4)))
    workdir = str(tmp_path / "p")
    with pytest.raises(LabelingError, match="no row for 1 of the 120"):
        LabelingProject.create(
            workdir, images=images, config=dataclasses.replace(CONFIG, features=emb), log=quiet
        )
    assert not os.path.exists(os.path.join(workdir, "pool.npz"))


@pytest.mark.parametrize(
    "change, match",
    [
        ({"features": "clip"}, "--features must be one of"),
        ({"method": "pt4al"}, "--method must be one of"),
        ({"classifier": "svm"}, "--classifier must be one of"),
    ],
)
def test_bad_settings_are_one_sentence(change, match):
    with pytest.raises(LabelingError, match=match):
        dataclasses.replace(CONFIG, **change).check()
