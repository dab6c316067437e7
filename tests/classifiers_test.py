"""experiments.classifiers: the kNN score, the choice on validation, a toy run on digits."""

import os
import subprocess
import sys

import numpy as np
from runner_util import ROOT, runner_env

from experiments import classifiers


def test_knn_vs_labeled_votes_the_nearest_labels_by_cosine():
    labeled = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.2, 1]], np.float32)
    labels = np.array([0, 0, 1, 1, 1])
    query = np.array([[10, 1], [1, 5], [1, 0.1]], np.float32)  # lengths do not matter
    assert classifiers.knn_vs_labeled(labeled, labels, query, np.array([0, 1, 0]), k=1) == 1.0
    # k = 5: every labeled image votes, class 1 has three of them.
    assert classifiers.knn_vs_labeled(labeled, labels, query, np.array([1, 1, 1]), k=5) == 1.0


def test_chosen_is_the_highest_mean():
    rows = [dict(o="a", val=0.5), dict(o="a", val=0.7), dict(o="b", val=0.65)]
    assert classifiers.chosen(rows, ("a", "b"), "val", "o") == "b"


def test_toy_run_scores_validation_and_test(tmp_path):
    out = tmp_path / "classifiers.md"
    cmd = [sys.executable, "-m", "experiments.classifiers", "--config=digits_cpu"]
    cmd += ["--sizes=40", "--seeds=0", f"--out={out}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=runner_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert "validation accuracy % (chooses)" in text and "test accuracy % (reports only)" in text
    assert "Chosen on validation (highest mean over the sizes): **`linear" in text
    assert os.path.getsize(out) > 0 and "| **" in text  # the chosen PCA dimension is marked
