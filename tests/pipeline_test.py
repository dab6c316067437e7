"""The runner end to end on digits at toy size: outputs, kill-and-resume, refusals."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from runner_util import ROOT, TINY, runner_cmd, runner_env
from runner_util import run_runner as _run

from experiments import report


def _comparable(records):
    return [{k: v for k, v in r.items() if k not in ("seconds",)} for r in records]


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    # A private parent: the default pretext cache lives beside the workdir, and the basetemp
    # directory is shared with every other test of this xdist worker.
    workdir = str(tmp_path_factory.mktemp("pipeline") / "clean")
    proc = _run(workdir, f"--model_dir={os.path.join(os.path.dirname(workdir), 'models')}")
    return workdir, proc


def test_outputs(clean_run):
    workdir, proc = clean_run
    records = report.read_jsonl(os.path.join(workdir, "results.jsonl"))
    assert [(r["method"], r["cycle"]) for r in records] == [
        (m, c) for m in ("bal", "random") for c in range(2)
    ]
    for m in ("bal", "random"):
        ids = [i for r in records if r["method"] == m for i in r["selected_ids"]]
        assert len(ids) == len(set(ids)) == records[-1]["num_labeled"]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in records)
    assert {r["beta"] for r in records if r["method"] == "bal"} <= {1.0, 2.0}
    with open(os.path.join(workdir, "seed0", "beta.json")) as f:
        assert set(json.load(f)["scores"]) == {"1.0", "2.0"}
    for name in ("summary.md", "curves.png", "selections.png", "config.json", "meta.json"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert "| bal |" in proc.stdout and "| random |" in proc.stdout


def test_kill_mid_run_then_resume_reproduces_clean_run(clean_run, tmp_path):
    workdir = str(tmp_path)
    results = os.path.join(workdir, "results.jsonl")
    # Its own pretext cache, so the kill can land anywhere from pretext training on.
    cmd = runner_cmd(workdir, f"--pretext_dir={tmp_path / 'pretext'}")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=runner_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(results) and report.read_jsonl(results):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = report.read_jsonl(results)
    assert 1 <= len(partial) < 4
    _run(workdir, f"--pretext_dir={tmp_path / 'pretext'}")
    resumed = report.read_jsonl(results)
    expected = report.read_jsonl(os.path.join(clean_run[0], "results.jsonl"))
    assert _comparable(resumed) == _comparable(expected)
    with open(os.path.join(workdir, "summary.md")) as f:
        assert "resumed cycles finished by an earlier one" in f.read()
    with open(os.path.join(clean_run[0], "summary.md")) as f:
        assert "resumed" not in f.read()


def test_pretext_features_are_shared_across_budgets_and_seeds(clean_run, tmp_path):
    # Which settings make a new cache folder: runner_checks_test's cache-key tests.
    pretext_dir = os.path.join(os.path.dirname(clean_run[0]), "pretext")
    assert "pretext training" in clean_run[1].stdout
    (cache,) = os.listdir(pretext_dir)
    assert os.path.exists(os.path.join(pretext_dir, cache, "seed0.npz"))
    # Another budget, and seed 1 with --pretext_seed=0: seed 0's features are loaded, not
    # trained again for the budget or for seed 1.
    shared_seed = _run(
        str(tmp_path / "shared_seed"),
        f"--pretext_dir={pretext_dir}",
        "--pretext_seed=0",
        "--seeds=1",
        "--fractions=0.05",
        "--method=pt4al",
    )
    assert "pretext features loaded" in shared_seed.stdout
    assert os.listdir(pretext_dir) == [cache]
    assert not os.path.exists(os.path.join(pretext_dir, cache, "seed1.npz"))


def test_diagnose_reads_the_runs_pretext_features(clean_run):
    pretext_dir = os.path.join(os.path.dirname(clean_run[0]), "pretext")
    cmd = [sys.executable, "-m", "experiments.diagnose", f"--pretext_dir={pretext_dir}", *TINY]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| pretext (width 0.0625) | 0 |" in proc.stdout and "| raw pixels | 0 |" in proc.stdout


def test_diagnose_purity_and_nmi_match_scikit_learn():
    from sklearn.metrics import normalized_mutual_info_score

    from experiments.diagnose import nmi, purity

    rng = np.random.default_rng(0)
    y, c = rng.integers(0, 5, 300), rng.integers(0, 7, 300)
    assert nmi(y, c) == pytest.approx(normalized_mutual_info_score(y, c), abs=1e-9)
    assert purity(y, y) == 1.0 and nmi(y, y) == pytest.approx(1.0)
    assert purity(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0])) == 0.5


def test_workdir_of_another_config_is_refused(clean_run):
    proc = _run(clean_run[0], "--epochs=3", check=False)
    assert proc.returncode != 0
    assert "different configuration" in proc.stderr and "epochs" in proc.stderr


def test_model_dir_shares_trained_models_across_runs(clean_run, tmp_path):
    # The clean run stored its models in --model_dir; a run with another method list and
    # workdir restores the ones it shares (random's) instead of training them again.
    models = os.path.join(os.path.dirname(clean_run[0]), "models")
    stored = len(os.listdir(models))
    _run(str(tmp_path), f"--model_dir={models}", "--method=random")
    again = report.read_jsonl(os.path.join(tmp_path, "results.jsonl"))
    first = report.read_jsonl(os.path.join(clean_run[0], "results.jsonl"))
    assert [r["accuracy"] for r in again] == [
        r["accuracy"] for r in first if r["method"] == "random"
    ]
    assert all(r["shared_model"] for r in again)
    assert len(os.listdir(models)) == stored
    assert not os.path.exists(os.path.join(tmp_path, "seed0", "models"))


def test_linear_head_reuses_the_pretexts_patch_transform(tmp_path):
    """--classifier=linear: the head's features come from the patch transform the pretext
    stage fitted and cached (no second fit; a run of methods that need no pretext features
    fits it for the head alone)."""
    from bal_jax import patch_features
    from experiments import config as config_lib
    from experiments.config import load_data

    workdir = str(tmp_path / "linear")
    # One cycle (each labeled-set size compiles its own cross-validated head) on a 240-image
    # pool: the patch transform is fitted on, and featurises, every image.
    small = ["--train_subset=300", "--val_size=60", "--test_subset=100", "--fractions=0.05"]
    proc = _run(workdir, "--pretext=patches", "--classifier=linear", "--method=typiclust", *small)
    records = report.read_jsonl(os.path.join(workdir, "results.jsonl"))
    assert len(records) == 1 and all(r["l2"] > 0 and 0 <= r["accuracy"] <= 1 for r in records)
    (cache,) = [
        os.path.join(root, f)
        for root, _, files in os.walk(os.path.join(tmp_path, "pretext"))
        for f in files
        if f == "seed0_head.npz"
    ]
    pretext = np.load(os.path.join(os.path.dirname(cache), "seed0.npz"))
    stored = {k[10:]: pretext[k] for k in pretext.files if k.startswith("transform_")}
    transform = patch_features.transform_from_arrays(stored)
    data = load_data(
        dataclasses.replace(config_lib.digits_cpu(), train_subset=300, val_size=60, test_subset=100)
    )
    expected = patch_features.patch_features(transform, data.pool.images[:50], whiten=False)
    np.testing.assert_allclose(np.load(cache)["pool"][:50], expected, rtol=1e-4, atol=1e-4)
    assert "linear head features" in proc.stderr + proc.stdout
