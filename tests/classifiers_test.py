"""experiments.classifiers: the kNN score, the choice on validation, the tables."""

import numpy as np

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


def test_tables_choose_on_validation_and_report_test():
    rows = [
        dict(option=o, size=s, seed=seed, val=v + 0.01 * seed, test=v - 0.05, seconds=1.0)
        for o, v in zip(classifiers.OPTIONS, (0.3, 0.4, 0.5), strict=True)
        for s in (10, 20)
        for seed in (0, 1)
    ]
    assert classifiers.chosen(rows, classifiers.OPTIONS, "val", "option") == "linear_flip"
    val = classifiers.table(rows, [10, 20], "val")
    assert "| `linear_flip` | 50.5 ± 0.5 | 50.5 ± 0.5 | 50.5 | 1.0 |" in val
    assert "| `linear_flip` | 45.0 ± 0.0 |" in classifiers.table(rows, [10, 20], "test")
    line = classifiers.paired(rows, [10, 20], "linear_flip", "linear")
    assert line.startswith("`linear_flip` minus `linear` on validation") and "+10.0 ± 0.0" in line
