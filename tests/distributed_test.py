"""Several processes (issue 15): `experiments.launch` with 2 processes x 1 CPU device against
1 process x 2 devices on a tiny digits run, kill-and-resume, and the refusals.

Both layouts run through `jax.distributed` and gloo, so every cross-device sum is reduced in the
same order, and with ``NPROC=2`` every process has the same XLA:CPU intra-op thread pool
(XLA sizes it max(NPROC or the cores, local devices), and splits reductions and convolutions
over it). With both fixed the two layouts compute bit for bit the same numbers, so selections
and accuracies are compared exactly: any difference is a bug in how the processes share the
work, not float rounding. (Without those two fixes the layouts differ in the last float bit;
one-epoch training amplifies that into other pretext features, another CDD order and other
selections, which would hide real bugs behind a tolerance.)
"""

import os
import signal
import subprocess
import sys
import time

import pytest
from runner_util import ROOT, runner_env

from experiments import launch, report

# The smallest run that still goes through pretext, beta search, model store and 2 cycles of
# both methods; batch 8 keeps one compiled training step for every labeled set size.
TINY = [
    "--dataset=digits",
    "--width=0.0625",
    "--epochs=1",
    "--pretext_epochs=1",
    "--train_subset=300",
    "--val_size=60",
    "--test_subset=100",
    "--fractions=0.04,0.08",
    "--method=bal,random",
    "--beta_grid=1,2",
    "--beta_search_cycles=1",
    "--kmeans_n_init=1",
    "--batch_size=8",
    "--pretext_batch_size=32",
    "--eval_batch_size=128",
    "--seeds=0",
]
TIMEOUT_S = 1200


def _env(cache_dir):
    env = dict(runner_env(), NPROC="2")
    # Compiled programs shared by the killed run and its relaunch (not by the two layouts:
    # their device assignments differ).
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


def _launch_cmd(num_processes, devices, workdir, *extra):
    return [
        sys.executable,
        "-m",
        "experiments.launch",
        f"--num_processes={num_processes}",
        f"--devices_per_process={devices}",
        "--",
        f"--workdir={workdir}",
        *TINY,
        *extra,
    ]


def _launch(num_processes, devices, workdir, env):
    t0 = time.perf_counter()
    proc = subprocess.run(
        _launch_cmd(num_processes, devices, workdir),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    # stderr's head too: a fatal error prints its message and stacks before the module list.
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[:3000] + proc.stderr[-1500:]
    return proc, time.perf_counter() - t0


def _comparable(records):
    # `shared_model` says whether a model came from the store, which a killed run may have
    # filled after its last checkpoint; the model and its numbers are the same either way.
    return [{k: v for k, v in r.items() if k not in ("seconds", "shared_model")} for r in records]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("distributed")
    env = _env(base / "jax_cache")
    # Separate parents: each layout trains its own pretext network (pretext/ beside the workdir).
    one, two = base / "one" / "run", base / "two" / "run"
    ref, ref_wall = _launch(1, 2, one, env)

    results = two / "results.jsonl"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        _launch_cmd(2, 1, two),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the launcher and its processes form one group to kill
    )
    deadline = time.time() + TIMEOUT_S
    while time.time() < deadline and proc.poll() is None:
        if results.exists() and report.read_jsonl(str(results)):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the 2-process run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_wall = time.perf_counter() - t0
    partial = report.read_jsonl(str(results))
    resumed, resumed_wall = _launch(2, 1, two, env)
    print(
        f"\nwall: 1 process x 2 devices {ref_wall:.0f}s; 2 processes x 1 device "
        f"{killed_wall:.0f}s until killed + {resumed_wall:.0f}s resumed"
    )
    return dict(one=one, two=two, ref=ref, resumed=resumed, partial=partial)


def test_two_processes_select_and_score_as_one(runs):
    expected = report.read_jsonl(str(runs["one"] / "results.jsonl"))
    got = report.read_jsonl(str(runs["two"] / "results.jsonl"))
    assert [(r["method"], r["cycle"]) for r in expected] == [
        (m, c) for m in ("bal", "random") for c in range(2)
    ]
    for e, g in zip(expected, got, strict=True):
        assert g["selected_ids"] == e["selected_ids"], (e["method"], e["cycle"])
    diff = max(abs(e["accuracy"] - g["accuracy"]) for e, g in zip(expected, got, strict=True))
    print(f"\nlargest test accuracy difference: {diff}")
    assert _comparable(got) == _comparable(expected)


def test_killed_processes_resume_and_write_results_once(runs):
    assert 1 <= len(runs["partial"]) < 4
    out, err = runs["resumed"].stdout, runs["resumed"].stderr
    # Process 0 alone logs, prints the summary and writes the reports.
    assert out.count("[random] cycle 2/2") == 1 and out.count("# BAL on digits") == 1
    assert "cycle" not in "".join(line for line in err.splitlines() if "[process 1]" in line)
    with open(runs["two"] / "summary.md") as f:
        assert "resumed cycles finished by an earlier one" in f.read()
    records = report.read_jsonl(str(runs["two"] / "results.jsonl"))
    assert len({(r["method"], r["cycle"]) for r in records}) == len(records) == 4


def test_batch_not_divisible_by_the_processes_is_refused(tmp_path):
    cmd = _launch_cmd(2, 1, tmp_path / "run", "--batch_size=15")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    message = "error: --batch_size=15 must be a multiple of the 2 devices of the 2 processes"
    assert message in proc.stderr
    assert not (tmp_path / "run" / "config.json").exists()


def test_processes_started_with_different_flags_are_refused(tmp_path):
    address = f"127.0.0.1:{launch.free_port()}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "experiments.main",
                f"--workdir={tmp_path / 'run'}",
                *TINY,
                *extra,
                "--distributed",
                f"--coordinator_address={address}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=ROOT,
            env=launch.process_env(1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, extra in enumerate([(), ("--epochs=2",)])
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode != 0
        assert (
            "error: process(es) [1] have a different configuration than process 0: start every "
            "process with the same flags"
        ) in err
    assert not (tmp_path / "run" / "config.json").exists()


def test_unreachable_coordinator_times_out_with_one_sentence(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "experiments.main",
        f"--workdir={tmp_path}",
        "--distributed",
        f"--coordinator_address=127.0.0.1:{launch.free_port()}",
        "--num_processes=2",
        "--process_id=1",
        "--distributed_timeout=2",
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=launch.process_env(1), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the processes did not all reach the coordinator at 127.0.0.1:")
    assert last.endswith(
        "within 2s: start every process with the same coordinator address and "
        "process count, and check that process 0 runs there"
    )
