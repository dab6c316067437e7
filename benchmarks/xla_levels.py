r"""XLA:CPU compile options against the eager computation and against the defaults: which
options may the test suite compile with?

    python -m benchmarks.xla_levels

Each option set runs in its own process (XLA reads `XLA_FLAGS` when its backend starts), with
one XLA thread (`NPROC=1`, as the tests run), on the toy VGG16 (width 1/16) and 36 of the
bundled digits:
- `compile s`: seconds to compile `jit(value_and_grad(loss))`;
- `grad`: the largest difference between that function's gradients and the same function run
  eagerly (op by op, each op compiled alone) over every parameter;
- `fit 3 steps`: the largest parameter difference after three `bal_jax.train.fit` steps (batch
  12, no augmentation) against the default options.
The rows: the backend optimisation levels 0, 1 and 2 (2 is the default), and `tests`, the
options the test suite compiles with (`TEST_XLA_FLAGS`, tests/conftest.py). The runner
subprocesses of the tests used level 0 for its faster compiling until this showed it
computing other numbers (tests/runner_util.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

# The options the test suite compiles with (tests/conftest.py reads them from here): the
# legacy XLA:CPU fusion emitters, LLVM without its expensive passes, optimisation level 1.
TEST_XLA_FLAGS = (
    "--xla_cpu_use_fusion_emitters=false --xla_llvm_disable_expensive_passes=true "
    "--xla_backend_optimization_level=1"
)
OPTIONS = {
    "level 0": "--xla_backend_optimization_level=0",
    "level 1": "--xla_backend_optimization_level=1",
    "level 2 (default)": "",
    "tests": TEST_XLA_FLAGS,
}
DEFAULT = "level 2 (default)"

_CHILD = r"""
import json, sys, time
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

t = time.perf_counter()
compiled = jax.jit(jax.value_and_grad(loss_fn)).lower(params).compile()
compile_s = time.perf_counter() - t
g_jit = compiled(params)[1]
g_eager = jax.value_and_grad(loss_fn)(params)[1]
grad = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
           for a, b in zip(jax.tree.leaves(g_jit), jax.tree.leaves(g_eager)))
net = VGG16(10, in_channels=1, width=1 / 16, rngs=nnx.Rngs(3))
train.fit(jax.random.key(0), net, x, y, epochs=1, batch_size=12, learning_rate=0.05,
          mean=mean, std=std, augment=False)
leaves = jax.tree.leaves(nnx.as_pure(nnx.state(net, nnx.Param)))
flat = np.concatenate([np.ravel(a) for a in leaves])
np.save(sys.argv[1], flat)
print(json.dumps({"grad": grad, "compile_s": compile_s,
                  "max_grad": max(float(np.max(np.abs(np.asarray(a))))
                                  for a in jax.tree.leaves(g_eager))}))
"""


def run_options(xla_flags: str, out: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_ENABLE_COMPILATION_CACHE="false")
    env.update(XLA_FLAGS=xla_flags, NPROC="1")
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
        files = {name: os.path.join(tmp, f"{i}.npy") for i, name in enumerate(OPTIONS)}
        rows = {name: run_options(flags, files[name]) for name, flags in OPTIONS.items()}
        ref = np.load(files[DEFAULT])
        for name, r in rows.items():
            r["fit"] = float(np.max(np.abs(np.load(files[name]) - ref)))
    print(
        "| XLA:CPU options | compile s | grad: jit minus eager (max abs) | largest gradient "
        "| fit 3 steps minus the default |"
    )
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} `{OPTIONS[name] or 'none'}` | {r['compile_s']:.1f} | {r['grad']:.2g} "
            f"| {r['max_grad']:.2g} | {r['fit']:.2g} |"
        )


if __name__ == "__main__":
    main()
