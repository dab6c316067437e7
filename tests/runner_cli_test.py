"""The runner's command line: bad flags fail fast, and the real-data preset runs at toy size."""

import os
import subprocess
import sys
import time

import pytest
from runner_util import ROOT, run_runner, runner_env

from experiments import report


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--method=bal,bogus", "unknown method 'bogus'"),
        ("--fractions=0.2,0.1", "increasing"),
        ("--fractions=0.0001,0.0002", "too small"),
        ("--beta=0.01", "below its minimum"),
        ("--milestones=5,3", "strictly increasing"),
        ("--dataset=nosuchdataset", "nosuchdataset"),
        ("--pretext_seed=-1", "--pretext_seed must be >= 0"),
    ],
)
def test_bad_flags_fail_fast_with_one_sentence(tmp_path, flag, message):
    t0 = time.time()
    proc = run_runner(str(tmp_path), flag, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.time() - t0 < 60
    assert not os.path.exists(os.path.join(tmp_path, "seed0"))


CIFAR = os.path.join(ROOT, "..", "shared", "datasets", "cifar10-jpg.tar.gz")


@pytest.mark.skipif(not os.path.exists(CIFAR), reason="shared CIFAR-10 tarball not present")
def test_cifar10_cpu_preset_smoke(tmp_path):
    """The real-data preset at toy size, so the preset cannot rot."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.main",
            "--config=cifar10_cpu",
            f"--workdir={tmp_path}",
            # The width the other runner tests train at, so their compiled programs are reused.
            "--width=0.0625",
            "--train_subset=400",
            "--val_size=100",
            "--test_subset=200",
            "--pretext_epochs=1",
            "--epochs=1",
            # The preset's small_data recipe trains at least 640 steps a cycle: too slow for a
            # smoke run (noise_test and recipe_test cover it).
            "--recipe=paper",
            "--fractions=0.1,0.2",
            "--beta_grid=1,2",
            "--beta_search_cycles=1",  # the preset's 2 train 2 more models for nothing new
            # The methods that read the preset's pretext (the others: presets_e2e_test).
            "--method=bal,pt4al,random",
        ],
        cwd=ROOT,
        env=runner_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = report.read_jsonl(os.path.join(tmp_path, "results.jsonl"))
    assert len(records) == 3 * 2
    assert [r["num_labeled"] for r in records if r["method"] == "bal"] == [30, 60]
    assert "| pt4al |" in proc.stdout
