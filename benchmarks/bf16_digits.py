r"""bf16 mixed precision against float32 on the digits data set: a short training at equal settings.

    python -m benchmarks.bf16_digits --out=benchmarks/results_bf16_digits.md
    python -m benchmarks.bf16_digits --epochs=2 --out=/tmp/x.md   # a plumbing check

Trains VGG16 (width 1/8) from the same initial weights with the same key on the 1,437 digits
training images, once per dtype, then evaluates on the 360 test images in that dtype. Reports the
training loss per epoch, the test accuracy and the seconds per epoch after the first (which holds
the compilation). On a CPU bf16 is not expected to be faster: XLA:CPU converts bf16 convolutions
to float32 and back; the point there is that bf16 trains as well as float32.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from bal_jax import train
from bal_jax.data.digits import load_digits
from bal_jax.models import VGG16
from bal_jax.precision import DTYPES
from benchmarks import timing


def define_flags() -> None:
    """The command's flags (defined on demand: other commands own some of the names)."""
    flags.DEFINE_integer("epochs", 12, "Training epochs.")
    flags.DEFINE_float("width", 0.125, "VGG16 width.")
    flags.DEFINE_integer("batch_size", 64, "Batch size.")
    flags.DEFINE_float("lr", 0.05, "Learning rate (multistep, drops 10x at 3/4 of the run).")
    flags.DEFINE_string("out", "benchmarks/results_bf16_digits.md", "Markdown output.")


def run_one(dtype: str, *, epochs: int, width: float, batch_size: int, lr: float) -> dict:
    """Trains and evaluates one model in ``dtype``.

    Args:
      dtype: compute dtype.
      epochs, width, batch_size, lr: training settings.

    Returns:
      ``{'loss': per-epoch losses, 'accuracy': test accuracy, 'epoch_s': per-epoch seconds}``.
    """
    ds = load_digits()
    model = VGG16(10, in_channels=1, width=width, rngs=nnx.Rngs(0))
    stamps = [time.perf_counter()]
    history = train.fit(
        jax.random.key(1),
        model,
        ds.train_images,
        ds.train_labels,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=lr,
        milestones=(max(1, epochs * 3 // 4),),
        mean=ds.mean,
        std=ds.std,
        dtype=dtype,
        progress=lambda epoch, metrics: stamps.append(time.perf_counter()),
    )
    acc = train.evaluate(
        model,
        ds.test_images,
        ds.test_labels,
        batch_size=360,
        mean=ds.mean,
        std=ds.std,
        dtype=dtype,
    )
    return {"loss": history["loss"], "accuracy": acc, "epoch_s": np.diff(stamps)}


def main(argv):
    del argv
    settings = dict(
        epochs=flags.FLAGS.epochs,
        width=flags.FLAGS.width,
        batch_size=flags.FLAGS.batch_size,
        lr=flags.FLAGS.lr,
    )
    machine = timing.machine_description()  # the load average at the start
    results = {dtype: run_one(dtype, **settings) for dtype in DTYPES}
    lines = [
        "# bf16 mixed precision vs float32: digits, VGG16 width "
        f"{settings['width']:g}, {settings['epochs']} epochs, batch {settings['batch_size']}, "
        f"lr {settings['lr']:g}",
        "",
        f"Command: `python -m benchmarks.bf16_digits --epochs={settings['epochs']} "
        f"--out={flags.FLAGS.out}`. Same initial weights and key for both rows.",
        "",
        timing.format_kv_table(machine),
        "",
        "| dtype | test accuracy | first / last epoch loss | s/epoch (median after the first) "
        "| first epoch s (compile) |",
        "|---|---|---|---|---|",
    ]
    for dtype, r in results.items():
        steady = np.median(r["epoch_s"][1:]) if len(r["epoch_s"]) > 1 else float("nan")
        lines.append(
            f"| {dtype} | {100 * r['accuracy']:.1f}% | {r['loss'][0]:.3f} / {r['loss'][-1]:.3f} "
            f"| {steady:.2f} | {r['epoch_s'][0]:.1f} |"
        )
    gap = 100 * (results["bfloat16"]["accuracy"] - results["float32"]["accuracy"])
    lines += [
        "",
        f"bf16 minus float32 test accuracy: {gap:+.1f} points. Load average at the end: "
        f"{timing.load_average()} (a loaded machine slows both rows alike only roughly).",
        "",
    ]
    text = "\n".join(lines)
    with open(flags.FLAGS.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    define_flags()
    app.run(main)
