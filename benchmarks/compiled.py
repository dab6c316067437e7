r"""The real training step compiled on abstract inputs: XLA's memory and FLOP counts, no step run.

    python -m benchmarks.compiled --out=benchmarks/results_memory.md   # the paper preset's table

``compile_train_step`` lowers ``bal_jax.train.train_step`` (the function ``fit`` calls) for a VGG16
of the given width, batch and dtype, with ``jax.ShapeDtypeStruct`` stand-ins for the parameters
and optimizer state, so compiling the paper's width-1 network needs no memory for it and runs no
step. ``memory_analysis()`` then gives XLA's buffer assignment (arguments, outputs, donated
aliases, temporaries) and ``cost_analysis()`` the step's FLOPs (used for model FLOPs utilisation
by ``benchmarks.device_check``).
"""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from bal_jax.models import VGG16
from bal_jax.precision import compute_dtype
from bal_jax.train.inputs import make_hparams, split_for
from bal_jax.train.optim import MAX_MILESTONES, make_optimizer
from bal_jax.train.step import TrainState, train_step
from benchmarks import timing


class StepCost(NamedTuple):
    """What XLA reports for one compiled training step (bytes and FLOPs)."""

    argument_bytes: int
    output_bytes: int
    alias_bytes: int  # outputs written into donated arguments
    temp_bytes: int
    flops: float
    compile_s: float

    @property
    def total_bytes(self) -> int:
        """Device memory the step needs: arguments + outputs - donated aliases + temporaries."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes


def compile_train_step(
    *,
    width: float,
    batch_size: int,
    dtype: str,
    num_classes: int = 10,
    image_size: int = 32,
    channels: int = 3,
    rotation: bool = False,
    conv_impl: str = "auto",
):
    """Lowers and compiles ``train_step`` for a VGG16 on abstract parameters.

    Args:
      width: VGG16 width.
      batch_size: images per step (for ``rotation``, each image gives four views).
      dtype: compute dtype.
      num_classes: head size (4 for the rotation net).
      image_size: image side.
      channels: image channels.
      rotation: the rotation pretext step.
      conv_impl: convolution formulation; ``'xla'`` gives the graph a GPU or TPU compiles.

    Returns:
      ``(compiled, make_args)``: the compiled step, and a function returning
      ``(args, static_kwargs)`` for ``train_step`` with zero arrays of the compiled shapes (for
      timing the step on a device).
    """
    compute_dtype(dtype)
    abstract = nnx.eval_shape(
        lambda: VGG16(
            num_classes, in_channels=channels, width=width, conv_impl=conv_impl, rngs=nnx.Rngs(0)
        )
    )
    graphdef, params, rest = split_for(abstract, training=True, dtype=dtype)
    tx = make_optimizer(learning_rate=0.1, boundaries=(), lr_decay=0.1)
    opt_state = jax.eval_shape(tx.init, params)
    state = TrainState(params, rest, opt_state, jax.ShapeDtypeStruct((), jnp.int32), None)
    hp = make_hparams(
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        channels=channels,
    )
    hp = hp._replace(boundaries=jnp.full((MAX_MILESTONES,), np.iinfo(np.int32).max, jnp.int32))
    batch = (
        jax.ShapeDtypeStruct((batch_size, image_size, image_size, channels), jnp.uint8),
        None if rotation else jax.ShapeDtypeStruct((batch_size,), jnp.int32),
        jax.ShapeDtypeStruct((batch_size,), jnp.bool_),
        jax.random.key(0),
    )
    static = dict(
        augment=True, rotation=rotation, batch_sharding=None, schedule="multistep", nesterov=False
    )
    lowered = train_step.lower(graphdef, state, hp, *batch, **static)
    compiled = lowered.compile()

    def make_args():
        def zeros(s):
            return jnp.zeros(s.shape, s.dtype) if isinstance(s, jax.ShapeDtypeStruct) else s

        return (graphdef, jax.tree.map(zeros, state), hp, *jax.tree.map(zeros, batch)), static

    return compiled, make_args


def step_cost(**kwargs) -> StepCost:
    """Compiles the step (``compile_train_step`` arguments) and reads XLA's analyses."""
    t0 = time.perf_counter()
    compiled, _ = compile_train_step(**kwargs)
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return StepCost(
        int(mem.argument_size_in_bytes),
        int(mem.output_size_in_bytes),
        int(mem.alias_size_in_bytes),
        int(mem.temp_size_in_bytes),
        float(cost.get("flops", float("nan"))) if cost else float("nan"),
        seconds,
    )


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f}"


def main(argv):
    del argv
    machine = timing.machine_description()
    rows = []
    for batch in (int(b) for b in flags.FLAGS.batches):
        for rotation in (False, True):
            for dtype in ("float32", "bfloat16"):
                c = step_cost(
                    width=flags.FLAGS.width,
                    batch_size=batch,
                    dtype=dtype,
                    num_classes=4 if rotation else 10,
                    rotation=rotation,
                    conv_impl="xla",
                )
                what = (
                    f"pretext (rotation), {batch} images = {4 * batch} views"
                    if rotation
                    else (f"main task, batch {batch}")
                )
                rows.append(
                    f"| {what} | {dtype} | {_mib(c.argument_bytes)} | {_mib(c.output_bytes)} | "
                    f"{_mib(c.alias_bytes)} | {_mib(c.temp_bytes)} | **{_mib(c.total_bytes)}** | "
                    f"{c.flops / 1e9:,.0f} | {c.compile_s:.0f} |"
                )
                print(rows[-1], flush=True)
    text = "\n".join(
        [
            f"# Compiled training step memory: the paper's `cifar10` preset (VGG16-BN width "
            f"{flags.FLAGS.width:g}, 32x32x3)",
            "",
            f"Command: `python -m benchmarks.compiled --out={flags.FLAGS.out}` (compiles "
            "`bal_jax.train.train_step` on abstract inputs; no step is run). Figures are "
            "XLA's `memory_analysis()` of the step as compiled **on this machine's backend** "
            "(below); the convolutions use XLA's op (`conv_impl='xla'`), the graph a GPU/TPU "
            "compiles, not the CPU's im2col. A GPU's buffer assignment differs (fusions, cuDNN "
            "workspaces), so read them as the size of the step's working set, not as a GPU "
            "measurement. In particular XLA:CPU computes bf16 convolutions with float32 results "
            "(its compiled HLO shows `f32[...] convolution(bf16, bf16)`), so the bf16 rows here "
            "understate the saving on a GPU/TPU, whose convolutions return bf16.",
            "",
            "MiB; total = arguments + outputs - aliased (donated state written in place) + "
            "temporaries. FLOPs from `cost_analysis()` (forward + backward + update, per step).",
            "",
            "| step | dtype | arguments | outputs | aliased | temporaries | total | GFLOP | "
            "compile s |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            timing.format_kv_table(machine),
            "",
        ]
    )
    with open(flags.FLAGS.out, "w") as f:
        f.write(text)
    print(text)


def _define_flags() -> None:
    # Defined only when run as a script: benchmarks.device_check imports this module.
    flags.DEFINE_string("out", "benchmarks/results_memory.md", "Markdown output.")
    flags.DEFINE_float("width", 1.0, "VGG16 width (the paper's cifar10 preset: 1).")
    flags.DEFINE_list("batches", ["128", "256"], "Main-task batch sizes.")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
