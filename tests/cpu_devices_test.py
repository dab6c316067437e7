"""One XLA:CPU device per core by default (issue 25), the user's XLA_FLAGS respected, and a
workdir bound to the device count it was made with."""

import os
import subprocess
import sys

import jax
import pytest
from runner_util import ROOT

from bal_jax import parallel
from experiments import config as config_lib
from experiments.pipeline import _bind_workdir
from experiments.plan import ConfigError

_PROBE = (
    "import sys; from bal_jax import parallel; "
    "n = parallel.use_cpu_devices(None if len(sys.argv) < 2 else int(sys.argv[1])); "
    "import jax; print(n, jax.device_count())"
)


def _probe(xla_flags, *args):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        cwd=ROOT,
        env=dict(env, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.split()


@pytest.mark.parametrize(
    ("cores", "devices"), [(1, 1), (2, 2), (3, 2), (4, 4), (6, 4), (8, 8), (64, 8)]
)
def test_default_is_a_power_of_two_per_core_up_to_8(cores, devices):
    assert parallel.default_cpu_devices(cores) == devices


def test_cpu_split_by_default_and_the_users_flags_kept():
    expected = parallel.default_cpu_devices()
    assert _probe(None) == [str(expected), str(expected)]
    assert _probe(None, "3") == ["3", "3"]
    # A count in XLA_FLAGS is the user's (or experiments.launch's) choice: left alone.
    assert _probe("--xla_force_host_platform_device_count=1") == ["None", "1"]
    # Other XLA flags are kept beside the count.
    assert _probe("--xla_cpu_enable_fast_math=false") == [str(expected), str(expected)]


def test_too_late_and_bad_counts_are_refused():
    env = {}
    with pytest.raises(ValueError, match="at least 1"):
        parallel.use_cpu_devices(0, environ=env)
    jax.devices()  # the backend has started: the split can no longer apply
    with pytest.raises(RuntimeError, match="before JAX's first computation"):
        parallel.use_cpu_devices(2, environ=env)
    assert env == {}


def test_a_workdir_continues_only_on_its_device_count(tmp_path):
    c = config_lib.digits_cpu()
    _bind_workdir(str(tmp_path), c, 2)
    _bind_workdir(str(tmp_path), c, 2)
    with pytest.raises(ConfigError, match=r"differs in: devices\) \(it was made with 2 device"):
        _bind_workdir(str(tmp_path), c, 1)
    # One device is recorded as before the count existed: old workdirs stay valid.
    _bind_workdir(str(tmp_path / "one"), c, 1)
    with pytest.raises(ConfigError, match="--cpu_devices=1 on a CPU"):
        _bind_workdir(str(tmp_path / "one"), c, 2)
