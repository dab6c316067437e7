"""Shared pytest setup: strict rank promotion, as the house style asks, and one persistent
XLA compilation cache for the whole suite.

Most of the suite's time is XLA compiling the same small VGG16 steps again in every process
that trains one (the runner's subprocess runs, the xdist workers). The cache (keyed by the
program, the JAX version and the device) lets every process after the first load them; the
environment variable reaches the subprocesses too. Set JAX_COMPILATION_CACHE_DIR to choose
another folder.
"""

import os
import tempfile

os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "bal_jax_test_xla_cache")
)

import jax  # after the cache folder is set: JAX reads it at import

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
