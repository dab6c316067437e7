"""Shared pytest setup: strict rank promotion, as the house style asks, one persistent XLA
compilation cache for the runner subprocesses of the session, and one XLA thread per process.

Much of the suite's time is XLA compiling small VGG16 programs that then run a few steps, and
the runner's subprocess runs compile the same programs again. A cache folder made fresh for
each session (so no run depends on an earlier one) lets every subprocess after the first load
them; the environment variables reach the subprocesses. Set JAX_COMPILATION_CACHE_DIR to use
another folder. The pytest processes themselves do not use it (their programs are mostly
other shapes than the subprocesses', and turning it off kept the suite's time within its
run-to-run spread). XLA compiles with options that compile faster (`TEST_XLA_FLAGS`, below).
The process-wide limit that does matter, memory maps: see `_release_compiled_programs`.
"""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

from benchmarks.xla_levels import TEST_XLA_FLAGS  # no JAX import: XLA_FLAGS are set below

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="bal_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
# Every program, however fast it compiled: most toy programs compile in under JAX's default
# 1 s threshold, so without this a rerun of a tiny run loaded few of its 138 programs.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# One XLA:CPU intra-op thread per process (XLA sizes its pool max(NPROC or the cores, the
# process's devices)): the two pytest workers already keep both cores busy, and a pool per core
# in each worker and each runner subprocess oversubscribes them, its threads spinning while
# they wait. Clean clone, 2 cores, one run after the other: 605 s wall / 1,035 s user CPU with
# a pool per core, 517 s / 867 s with NPROC=1 (the processes inherit it; distributed_test
# sets its own). Only the split of work over threads changes, not the programs.
os.environ.setdefault("NPROC", "1")
# XLA:CPU options that compile faster, for the pytest processes and every subprocess they
# start (they inherit XLA_FLAGS; a user's own XLA_FLAGS come after ours, so theirs win). Most
# of the suite's CPU time is XLA compiling toy programs that then run for milliseconds. The
# legacy fusion emitters and LLVM without its expensive passes compiled five test files
# (typical, kmeans, coverage, train, learners) in 55 s instead of 90 s, their wall time 87 s
# instead of 125 s (`python -m benchmarks.compile_profile -- python -m pytest -n 0 FILES`);
# the whole suite 425 s instead of 554 s, one run after the other. The backend optimisation
# level 1 on top (LLVM's -O1 instead of -O2) compiles the toy VGG16's `jit(value_and_grad)`
# in 1.2 s instead of 1.5 s (`python -m benchmarks.xla_levels`); the suite took 440 s and
# 727 s of user CPU instead of 500 s and 843 s (one run after the other, same hour).
# They compute the same programs to float rounding, which every test tolerates (they hold
# across CPUs): `python -m benchmarks.xla_levels` compares jit with eager, and a 3-step fit
# with the default options' (its row "tests"). Not level 0: it miscompiles
# (tests/runner_util.py). To test at XLA's defaults, set XLA_FLAGS to
# "--xla_cpu_use_fusion_emitters=true --xla_llvm_disable_expensive_passes=false
# --xla_backend_optimization_level=2" (a flag's last value wins). A jaxlib that no longer
# knows a flag would abort every process, so a child process tries them first and they are
# left out, with a warning, if it fails.


def _with_test_xla_flags(environ) -> None:
    flags_now = environ.get("XLA_FLAGS", "")
    if TEST_XLA_FLAGS in flags_now:
        return  # a parent process (pytest-xdist's controller) checked and set them
    flags = f"{TEST_XLA_FLAGS} {flags_now}".strip()
    probe = subprocess.run(
        [sys.executable, "-c", "import jax; jax.numpy.zeros(1).block_until_ready()"],
        env=dict(environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if probe.returncode == 0:
        environ["XLA_FLAGS"] = flags
    else:
        why = (probe.stderr.strip().splitlines() or ["no message"])[-1]
        message = f"XLA does not take {TEST_XLA_FLAGS!r} ({why}); the tests compile without them."
        warnings.warn(message, stacklevel=1)


_with_test_xla_flags(os.environ)

import jax  # noqa: E402  (after XLA_FLAGS and NPROC are set)
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_enable_compilation_cache", False)  # in this process; see above


def _memory_maps() -> int | None:
    try:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)
    except OSError:  # not Linux
        return None


def _max_maps() -> int:
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 65530  # Linux's default


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs(request):
    """Drops JAX's compiled programs after a test file once the process holds half of the
    kernel's memory-map limit (vm.max_map_count, 65,530 by default). Every XLA:CPU executable
    keeps about five memory maps for its code; a single `-n 0` process compiles enough
    programs for the suite to reach the limit, and XLA then dies with SIGSEGV inside a
    compilation (two runs: after 610 and 663 s, in other programs each time; kmeans_test and
    heads_test alone leave 8,700 maps). Below the threshold nothing is dropped. Set
    BAL_JAX_TEST_MAPS_LOG to a file to log the count after every test file."""
    yield
    maps = _memory_maps()
    cleared = maps is not None and maps > _max_maps() // 2
    if cleared:
        jax.clear_caches()
    log = os.environ.get("BAL_JAX_TEST_MAPS_LOG")
    if log and maps is not None:
        with open(log, "a") as f:
            after = f" -> cleared: {_memory_maps()}" if cleared else ""
            f.write(f"{os.getpid()} {request.module.__name__} {maps}{after}\n")
