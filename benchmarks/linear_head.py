"""The linear head's cross-validation solves, side by side: `lax.map` (what `bal_jax.heads`
runs) against `vmap`, and 50 against 200 L-BFGS iterations.

    python -m benchmarks.linear_head                 # ~2 minutes on 2 cores
    python -m benchmarks.linear_head --rows=2000 --dim=1024 --reps=3

The problem is the shape of a cycle at 1,000 labels with their mirror images: `--rows` x
`--dim` standardised features of 10 Gaussian classes (seeded), and the 27 solves of 3-fold CV
over 9 L2 values. Timing: alternating repetitions after a compile run, medians and the median
ratio (`benchmarks.timing`). Convergence: the mean cross-entropy + L2 objective and the held-out
accuracy of one solve after 50 and after 200 iterations.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from bal_jax import heads
from benchmarks import timing


def define_flags() -> None:
    """The command's flags (defined on demand: other commands own some of the names)."""
    flags.DEFINE_integer("rows", 2000, "Rows (labeled images and their mirrors).")
    flags.DEFINE_integer("dim", 1024, "Feature dimension.")
    flags.DEFINE_integer("reps", 3, "Timed alternating repetitions.")


def problem(rows: int, dim: int, classes: int = 10, seed: int = 0):
    """Standardised features of `classes` Gaussian classes, labels, and as many held-out rows."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 0.08
    y = rng.integers(0, classes, 2 * rows)
    x = (centres[y] + rng.normal(size=(2 * rows, dim))).astype(np.float32)
    x = (x - x[:rows].mean(0)) / x[:rows].std(0)
    return x[:rows], y[:rows].astype(np.int32), x[rows:], y[rows:]


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def _fit_vmapped(z_ND, labels_N, weights_GN, l2_G, *, num_classes: int, steps: int):
    onehot = jax.nn.one_hot(labels_N, num_classes, dtype=jnp.float32)
    return jax.vmap(lambda w, l2: heads._solve(z_ND, onehot, w, l2, steps))(weights_GN, l2_G)


def main(argv):
    del argv
    f = flags.FLAGS
    x, y, x_test, y_test = problem(f.rows, f.dim)
    folds = heads.stratified_folds(jax.random.key(0), y, 3)
    grid = heads.L2_GRID
    weights = np.stack([(folds != k) for k in range(3) for _ in grid]).astype(np.float32)
    l2 = np.asarray([g for _ in range(3) for g in grid], np.float32)
    args = (jnp.asarray(x), jnp.asarray(y), jnp.asarray(weights), jnp.asarray(l2))
    kw = dict(num_classes=10, steps=heads._STEPS)
    t = timing.alternate(
        {
            "lax.map": lambda: jax.block_until_ready(heads._fit_many(*args, **kw)),
            "vmap": lambda: jax.block_until_ready(_fit_vmapped(*args, **kw)),
        },
        reps=f.reps,
    )
    ratio = timing.speedup(t.times["lax.map"], t.times["vmap"])
    print(f"{len(l2)} solves of {f.rows} x {f.dim}, {heads._STEPS} L-BFGS iterations each:")
    for side in ("lax.map", "vmap"):
        print(f"  {side:8s} median {timing.median(t.times[side]):.2f} s")
    print(f"  lax.map is {ratio:.2f}x as fast as vmap (median of per-round ratios)")

    one = (args[0], args[1], jnp.ones((1, f.rows), jnp.float32), jnp.asarray([0.1], jnp.float32))
    onehot = jax.nn.one_hot(args[1], 10, dtype=jnp.float32)
    print("one solve, L2 0.1:")
    for steps in (50, 200):
        w, b = heads._fit_many(*one, num_classes=10, steps=steps)
        loss = heads._loss((w[0], b[0]), args[0], onehot, one[2][0], 0.1)
        acc = np.mean(np.argmax(x_test @ np.asarray(w[0]) + np.asarray(b[0]), 1) == y_test)
        print(f"  {steps:3d} iterations: objective {float(loss):.6f}, held-out accuracy {acc:.4f}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
