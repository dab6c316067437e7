"""Benchmark suite: bal_jax side by side with PyTorch, scikit-learn and NumPy (issue 5).

Run everything with ``python -m benchmarks.run`` (see ``benchmarks/README.md``). PyTorch is a
benchmark-only dependency: nothing in ``bal_jax`` imports it, and importing this package does not
import it either.
"""
