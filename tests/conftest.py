"""Shared pytest setup: strict rank promotion, as the house style asks, and one persistent
XLA compilation cache for the session.

Much of the suite's time is XLA compiling small VGG16 programs that then run a few steps (one
width-1/16 training step takes about 10 s to compile on the 2-core CI machine), and the
runner's subprocess runs compile the same programs again. A cache folder made fresh for each
session (so no run depends on an earlier one) lets every process after the first load them;
the environment variable reaches the subprocesses and the xdist workers too. Set
JAX_COMPILATION_CACHE_DIR to use another folder. (XLA's optimisation level 0 would halve the
compile times, but changes losses by up to 0.09 against the reference computations.)
"""

import atexit
import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="bal_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache

import jax  # after the cache folder is set: JAX reads it at import

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])


# The files that take longest (each over a minute of one worker on the 2-core CI machine),
# longest first. `pytest -n 2 --dist loadfile` hands whole files to whichever worker is free,
# in collection order: starting the long ones first (longest-processing-time-first) keeps a
# long file from starting last while the other worker sits idle.
LONG_FILES = (
    "pipeline_test.py",
    "distributed_test.py",
    "presets_e2e_test.py",
    "runner_cli_test.py",
    "label_studio_test.py",
    "train_test.py",
    "benchmarks_test.py",
    "labeling_test.py",
    "active_loop_test.py",
    "recipe_test.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable
