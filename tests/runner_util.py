"""The runner as a subprocess at toy size, for the runner tests."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--dataset=digits",
    "--width=0.0625",
    "--pretext_epochs=1",
    "--epochs=2",
    "--fractions=0.03,0.06",
    "--method=bal,random",
    "--beta_grid=1,2",
    "--beta_search_cycles=1",
    "--seeds=0",
]


def runner_env():
    """The environment of the runner subprocesses: one XLA device (the two pytest workers
    already keep both cores busy, so the runner's per-core default would only add sharded
    compilations; tests/cpu_devices_test.py tests that default), and the suite's
    faster-compiling options (conftest.py's `TEST_XLA_FLAGS`, optimisation level 1 among
    them, which reach every subprocess through XLA_FLAGS).

    Not `--xla_backend_optimization_level=0`, which these tests used until it was found to
    compute other numbers (`python -m benchmarks.xla_levels`): at level 0 `jit(value_and_grad)`
    of the toy VGG16's loss differs from the eager gradients by up to 1.3 (the largest
    gradient is 1.4; 3e-6 at levels 1 and 2), and three training steps end 0.22 away from
    level 2's parameters (level 1: 6e-7). It saved about 1 s a run (less compiling, slower
    code)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        flags += " --xla_force_host_platform_device_count=1"
    return dict(os.environ, XLA_FLAGS=flags.strip())


def runner_cmd(workdir, *extra):
    return [sys.executable, "-m", "experiments.main", f"--workdir={workdir}", *TINY, *extra]


def run_runner(workdir, *extra, check=True):
    proc = subprocess.run(
        runner_cmd(workdir, *extra),
        cwd=ROOT,
        env=runner_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"runner failed:\n{proc.stderr[-3000:]}")
    return proc
