"""Shared pytest setup: strict rank promotion, as the house style asks, one persistent XLA
compilation cache for the runner subprocesses of the session, and one XLA thread per process.

Much of the suite's time is XLA compiling small VGG16 programs that then run a few steps, and
the runner's subprocess runs compile the same programs again. A cache folder made fresh for
each session (so no run depends on an earlier one) lets every subprocess after the first load
them; the environment variables reach the subprocesses. Set JAX_COMPILATION_CACHE_DIR to use
another folder. The pytest processes themselves do not use it (their programs are mostly
other shapes than the subprocesses', and turning it off kept the suite's time within its
run-to-run spread). Not XLA's optimisation level 0 either, in-process or in the subprocesses:
it compiles faster but miscompiles (tests/runner_util.py). The process-wide limit that does
matter, memory maps: see `_release_compiled_programs`.
"""

import atexit
import os
import shutil
import tempfile

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

import jax
import pytest

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
