import math
import os

import numpy as np
import pytest

from experiments import report


def _records():
    out = []
    for seed, base in ((0, 0.50), (1, 0.60)):
        for method, bonus in (("bal", 0.1), ("random", 0.0)):
            for cycle, f in enumerate((0.02, 0.04)):
                out.append(
                    {
                        "method": method,
                        "seed": seed,
                        "cycle": cycle,
                        "fraction": f,
                        "accuracy": base + bonus + 0.1 * cycle,
                        "selected_class_counts": [cycle + 1, 2, 3],
                    }
                )
    return out


def test_accuracy_table_mean_std():
    table = report.accuracy_table(_records(), ["bal", "random"])
    lines = table.splitlines()
    assert lines[0] == "| method | 2.0% | 4.0% |"
    # bal at 2%: seeds give 60 and 70 -> mean 65, sample std 7.07
    assert lines[2] == "| bal | 65.0 ± 7.1 | 75.0 ± 7.1 |"
    assert lines[3].startswith("| random | 55.0 ± 7.1 |")
    assert "2 seed(s) [0, 1]" in table


def test_paired_difference_table_pairs_by_seed():
    recs = _records()
    # Seed-to-seed spread (50 vs 60) is larger than the gap, but the gap is the same in both
    # seeds: the pairing sees +10 exactly.
    lines = report.paired_difference_table(recs, "bal").splitlines()
    assert lines[0] == "| bal minus | 2.0% | 4.0% | mean over the curve |"
    assert lines[2] == "| random | +10.0 ± 0.0 (+) | +10.0 ± 0.0 (+) | +10.0 ± 0.0 (+) |"
    for r in recs:  # random now beats bal by 10 in seed 0 only: mean 0, no verdict
        if r["method"] == "random" and r["seed"] == 0:
            r["accuracy"] += 0.2
    row = report.paired_difference_table(recs, "bal").splitlines()[2]
    assert row == "| random | +0.0 ± 14.1 | +0.0 ± 14.1 | +0.0 ± 14.1 |"
    assert report.paired_difference_table(recs, "coreset") == ""


def test_accuracy_table_refuses_nan():
    recs = _records()
    recs[0]["accuracy"] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        report.accuracy_table(recs)


def test_jsonl_roundtrip_and_plots(tmp_path):
    recs = _records()
    path = os.path.join(tmp_path, "r.jsonl")
    report.write_jsonl(path, recs)
    assert report.read_jsonl(path) == recs
    report.plot_curves(recs, os.path.join(tmp_path, "c.png"))
    report.plot_selection_histograms(recs, ["a", "b", "c"], os.path.join(tmp_path, "h.png"))
    for name in ("c.png", "h.png"):
        with open(os.path.join(tmp_path, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]
    np.testing.assert_equal(len(recs), 8)


@pytest.mark.parametrize(
    ("diffs", "mark"), [([1, 2, 3], ""), ([5, 6, 7], " (+)"), ([-5, -6, -7], " (−)")]
)
def test_paired_difference_marks_follow_a_t_test(diffs, mark):
    # [1, 2, 3]: mean 2 is 3.5 standard errors from 0, short of t(2 df) = 4.30.
    recs = [
        {"method": m, "seed": s, "fraction": 0.1, "accuracy": 0.5 + (d / 100 if m == "bal" else 0)}
        for s, d in enumerate(diffs)
        for m in ("bal", "random")
    ]
    row = report.paired_difference_table(recs, "bal").splitlines()[2]
    assert row.split(" | ")[1].endswith(f"± 1.0{mark}")


def test_class_balance_table_accumulates_counts_over_cycles():
    recs = [
        {"method": "a", "seed": 0, "cycle": 0, "fraction": 0.1, "selected_class_counts": [2, 0]},
        {"method": "a", "seed": 0, "cycle": 1, "fraction": 0.2, "selected_class_counts": [0, 2]},
        {"method": "b", "seed": 0, "cycle": 0, "fraction": 0.1, "selected_class_counts": [1, 1]},
        {"method": "b", "seed": 0, "cycle": 1, "fraction": 0.2, "selected_class_counts": [3, 1]},
    ]
    text = report.class_balance_table(recs)
    # a: one class only, then 2/2; b: 1/1, then 4/2 (entropy of (2/3, 1/3) in bits = 0.918).
    assert "| a | 0.000 (min 0) | 1.000 (min 2) |" in text
    assert "| b | 1.000 (min 1) | 0.918 (min 2) |" in text
    assert report.class_balance_table([{k: v for k, v in recs[0].items() if k[0] != "s"}]) == ""


def test_accuracy_table_names_methods_with_fewer_seeds():
    recs = [
        {"method": m, "seed": s, "fraction": 0.1, "accuracy": 0.5}
        for m, seeds in (("a", (0, 1, 2)), ("b", (0,)))
        for s in seeds
    ]
    text = report.accuracy_table(recs)
    assert "over 3 seed(s) [0, 1, 2]" in text and "Fewer seeds for b: [0]." in text


def test_curve_means_table_averages_test_and_validation_over_the_curve():
    recs = _records()
    assert report.curve_means_table(recs) == ""  # no validation accuracies: no table
    for r in recs:
        r["val_accuracy"] = r["accuracy"] - 0.02
    lines = report.curve_means_table(recs, ["bal", "random"]).splitlines()
    # bal: 65 at 2 %, 75 at 4 % -> 70 over the curve; validation 2 points lower.
    assert lines[2] == "| bal | 70.00 | 68.00 |"
    assert lines[3] == "| random | 60.00 | 58.00 |"
    bal = next(r for r in recs if r["method"] == "bal")
    del bal["val_accuracy"]  # one record without it: that method's validation is unknown
    assert report.curve_means_table(recs, ["bal"]).splitlines()[2] == "| bal | 70.00 | – |"


def test_field_table_means_a_record_field_and_is_empty_when_one_lacks_it():
    recs = [
        {"method": "a", "seed": s, "cycle": 0, "fraction": 0.1, "accuracy": 0.5, "train_loss": x}
        for s, x in ((0, 1.0), (1, 3.0))
    ]
    text = report.field_table(recs, "train_loss", "Loss.")
    assert "| a | 2 ± 1.4 |" in text and text.endswith("Loss.")
    assert report.field_table([dict(recs[0], train_loss=None)], "train_loss", "Loss.") == ""
