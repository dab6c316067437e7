r"""XLA:CPU's backend optimisation levels against the eager computation: is level 0 safe?

    python -m benchmarks.xla_levels

Each level runs in its own process (`XLA_FLAGS=--xla_backend_optimization_level=L` is read when
the backend starts) on the toy VGG16 (width 1/16) and 36 of the bundled digits:
- `grad`: the largest difference between `jit(value_and_grad(loss))` and the same function run
  eagerly (op by op, each op compiled alone) over every parameter's gradient;
- `fit 3 steps`: the largest parameter difference after three `bal_jax.train.fit` steps (batch 12,
  no augmentation) against level 2, the default.
The test suite's runner subprocesses used level 0 for its faster compiling until this showed
it computing other numbers (tests/runner_util.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

_CHILD = r"""
import json, sys
import jax, numpy as np, optax
from flax import nnx
from bal_jax import train
from bal_jax.data import load_digits
from bal_jax.models import VGG16

d = load_digits()
x, y = d.train_images[:36], d.train_labels[:36]
mean, std = (0.2,), (0.3,)
model = VGG16(10, in_channels=1, width=1 / 16, rngs=nnx.Rngs(3))
graphdef, params, rest = train.inputs.split_for(model, training=True)

def loss_fn(p):
    m = nnx.merge(graphdef, p, rest)
    xn = (x.astype(np.float32) / 255.0 - mean[0]) / std[0]
    return optax.softmax_cross_entropy_with_integer_labels(m(xn), y).mean()

g_jit = jax.jit(jax.value_and_grad(loss_fn))(params)[1]
g_eager = jax.value_and_grad(loss_fn)(params)[1]
grad = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
           for a, b in zip(jax.tree.leaves(g_jit), jax.tree.leaves(g_eager)))
net = VGG16(10, in_channels=1, width=1 / 16, rngs=nnx.Rngs(3))
train.fit(jax.random.key(0), net, x, y, epochs=1, batch_size=12, learning_rate=0.05,
          mean=mean, std=std, augment=False)
leaves = jax.tree.leaves(nnx.as_pure(nnx.state(net, nnx.Param)))
flat = np.concatenate([np.ravel(a) for a in leaves])
np.save(sys.argv[1], flat)
print(json.dumps({"grad": grad, "max_grad": max(float(np.max(np.abs(np.asarray(a))))
                                                 for a in jax.tree.leaves(g_eager))}))
"""

LEVELS = (0, 1, 2)


def run_level(level: int, out: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_ENABLE_COMPILATION_CACHE="false")
    env["XLA_FLAGS"] = f"--xla_backend_optimization_level={level}"
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, out],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    import tempfile

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        rows = {lv: run_level(lv, os.path.join(tmp, f"L{lv}.npy")) for lv in LEVELS}
        ref = np.load(os.path.join(tmp, "L2.npy"))
        for lv in LEVELS:
            rows[lv]["fit"] = float(np.max(np.abs(np.load(os.path.join(tmp, f"L{lv}.npy")) - ref)))
    print(
        "| XLA level | grad: jit minus eager (max abs) | largest gradient "
        "| fit 3 steps minus level 2 |"
    )
    print("|---|---|---|---|")
    for lv, r in rows.items():
        print(f"| {lv} | {r['grad']:.2g} | {r['max_grad']:.2g} | {r['fit']:.2g} |")


if __name__ == "__main__":
    main()
