"""experiments.compare: merging runs that differ only in what their selection sees."""

import json
import os
import subprocess
import sys

import pytest

from experiments import compare, report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = {"dataset": "digits", "budget": "small", "recipe": "small_data", "pretext": "rotation"}


def _records(method, accs, seed=0):
    return [
        {"method": method, "seed": seed, "cycle": c, "fraction": 0.02 * (c + 1), "accuracy": a}
        for c, a in enumerate(accs)
    ]


def _workdir(path, config, records):
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    report.write_jsonl(os.path.join(path, "results.jsonl"), records)
    return str(path)


def _runs(tmp_path, other_config=None, other_random=(0.3, 0.4)):
    a = _workdir(
        tmp_path / "a",
        BASE,
        _records("bal", [0.2, 0.3]) + _records("random", [0.3, 0.4]),
    )
    b = _workdir(
        tmp_path / "b",
        other_config or dict(BASE, pretext="simclr"),
        _records("bal", [0.4, 0.5]) + _records("random", list(other_random)),
    )
    return a, b


def test_merge_renames_selects_and_keeps_shared_methods_once(tmp_path):
    a, b = _runs(tmp_path)
    runs = [(w, *compare.load_run(w), n) for w, n in [(a, {"bal": "bal_rotation"}), (b, None)]]
    merged = compare.merge(runs)
    by = {(r["method"], r["cycle"]): (r["accuracy"], r["run"]) for r in merged}
    assert by == {
        ("bal_rotation", 0): (0.2, a),
        ("bal_rotation", 1): (0.3, a),
        ("bal", 0): (0.4, b),
        ("bal", 1): (0.5, b),
        ("random", 0): (0.3, b),
        ("random", 1): (0.4, b),
    }
    text = compare.summary(merged, runs, ["bal"], "t")
    assert "| bal minus |" in text and "| bal_rotation | `" in text
    assert "pretext=simclr" in text and "pretext=rotation" in text
    # The renamed BAL still reads pretext features; random reads none.
    assert "| bal_rotation | `" + a + "` | pretext=rotation |" in text
    assert "| random | `" + b + "` | the main model only (no pretext features) |" in text


def test_a_method_whose_accuracies_differ_between_runs_is_refused(tmp_path):
    a, b = _runs(tmp_path, other_random=(0.3, 0.41))
    runs = [(w, *compare.load_run(w), None) for w in (a, b)]
    with pytest.raises(compare.CompareError, match="random seed 0 cycle 1"):
        compare.merge([(a, runs[0][1], runs[0][2], {"random": "random"}), runs[1]])


def test_runs_that_train_differently_are_refused(tmp_path):
    a, b = _runs(tmp_path, other_config=dict(BASE, recipe="paper"))
    runs = [(w, *compare.load_run(w), None) for w in (a, b)]
    with pytest.raises(compare.CompareError, match="differ in recipe"):
        compare.merge(runs)


def test_an_ablation_names_the_training_setting_it_varies(tmp_path):
    a, b = _runs(tmp_path, other_config=dict(BASE, pretext="rotation", warm_start=False))
    with open(os.path.join(a, "config.json"), "w") as f:
        json.dump(dict(BASE, warm_start=True), f)
    names = [{"random": "random_warm"}, {"random": "random_scratch"}]
    runs = [(w, *compare.load_run(w), n) for w, n in zip((a, b), names, strict=True)]
    with pytest.raises(compare.CompareError, match="differ in warm_start"):
        compare.merge(runs)
    merged = compare.merge(runs, vary=["warm_start"])
    assert {r["method"] for r in merged} == {"random_warm", "random_scratch"}
    text = compare.summary(merged, runs, ["random_scratch"], "t", vary=["warm_start"])
    assert "| what its selection saw | warm_start |" in text
    assert (
        "| random_warm | `" + a + "` | the main model only (no pretext features) | True |" in text
    )
    assert (
        "| random_scratch | `" + b + "` | the main model only (no pretext features) | False |"
        in text
    )


def test_bad_specs_are_one_sentence(tmp_path):
    a, _ = _runs(tmp_path)
    with pytest.raises(compare.CompareError, match="no records of pt4al"):
        compare.merge([(a, *compare.load_run(a), {"pt4al": "pt4al"})])
    with pytest.raises(compare.CompareError, match="does not exist"):
        compare.load_run(str(tmp_path / "nowhere"))
    assert compare.parse_run("w:bal=x,random") == ("w", {"bal": "x", "random": "random"})


def test_command_writes_the_merged_report(tmp_path):
    a, b = _runs(tmp_path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "experiments.compare", f"--run={a}:bal=bal_rotation"]
    cmd += [f"--run={b}", "--reference=bal", f"--out={out}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| bal_rotation |" in (out / "summary.md").read_text()
    assert len(report.read_jsonl(str(out / "results.jsonl"))) == 6
    assert (out / "curves.png").exists()
    bad = subprocess.run(
        [*cmd[:3], f"--run={tmp_path / 'nowhere'}", f"--out={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and bad.stderr.strip().startswith("error:")
    assert len(bad.stderr.strip().splitlines()) == 1
