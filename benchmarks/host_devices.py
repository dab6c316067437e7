"""One XLA device per CPU core: training and pool-inference speed by host device count.

    python -m benchmarks.host_devices                     # 1, 2 and `nproc` devices
    python -m benchmarks.host_devices --devices=1,2 --steps=640 --rounds=3 \
        --out=benchmarks/results_host_devices.md

On a CPU-only machine JAX runs every computation on one device, and XLA's CPU convolutions for
small networks keep about one core busy. `XLA_FLAGS=--xla_force_host_platform_device_count=N`
splits the host into N devices; the runner's mesh then shards each batch over them (data
parallel, like GPUs), and N small computations run side by side.

Each round starts one fresh process per device count, in alternating order, each timing
`bal_jax.train.fit` of the `cifar10_cpu` main task (VGG16 width 1/8, batch 64, the small-data
recipe's optimiser steps on 200 random images) and `bal_jax.train.predict` over a pool of
random images (batch 512, the runner's evaluation batch), both after an untimed compile run.
The table gives the medians and the speed-up over one device (median of the per-round ratios).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

from benchmarks import timing


def define_flags() -> None:
    """The command's flags (defined on demand: other commands own some of the names)."""
    flags.DEFINE_list("devices", None, "Host device counts (default: 1, 2, nproc).")
    flags.DEFINE_integer("steps", 320, "Optimizer steps timed per run.")
    flags.DEFINE_integer("pool", 4096, "Images of the timed pool inference.")
    flags.DEFINE_integer("rounds", 3, "Alternating rounds (fresh processes each).")
    flags.DEFINE_float("width", 0.125, "VGG16 width.")
    flags.DEFINE_string("out", None, "Markdown file for the table (default: print only).")


_WORKER = r"""
import json, sys, time
import jax, numpy as np
from flax import nnx
from bal_jax import train
from bal_jax.models import VGG16
from bal_jax.parallel import make_mesh

steps, width, pool = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
n, batch = 200, 64
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
y = np.arange(n) % 10
mesh = make_mesh()
epochs = -(-steps // -(-n // batch))
times = []
for _ in range(2):  # the first run compiles
    model = VGG16(10, in_channels=3, width=width, rngs=nnx.Rngs(0))
    t = time.perf_counter()
    train.fit(jax.random.key(0), model, x, y, epochs=epochs, batch_size=batch,
              learning_rate=0.05, mean=(0.5,) * 3, std=(0.25,) * 3, mesh=mesh)
    times.append(time.perf_counter() - t)
steps_run = epochs * -(-n // batch)
images = rng.integers(0, 256, (pool, 32, 32, 3), dtype=np.uint8)
infer = []
for _ in range(2):  # the first run compiles
    t = time.perf_counter()
    out = train.predict(model, images, batch_size=512, mean=(0.5,) * 3, std=(0.25,) * 3,
                        mesh=mesh)
    np.asarray(out.logits_NC)
    infer.append(time.perf_counter() - t)
print("RESULT" + json.dumps({"devices": jax.device_count(), "s_per_step": times[1] / steps_run,
                             "img_per_s": pool / infer[1]}))
"""


def _run(devices: int, steps: int, width: float, pool: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env["PYTHONPATH"] = timing.REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER, str(steps), str(width), str(pool)],
        env=env,
        cwd=timing.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            result = json.loads(line[len("RESULT") :])
            if result["devices"] != devices:
                raise RuntimeError(f"asked for {devices} devices, got {result['devices']}")
            return result
    raise RuntimeError(f"worker failed: {proc.stderr.strip()[-500:]}")


def measure(
    devices: list[int], *, steps: int, rounds: int, width: float, pool: int
) -> dict[int, list[dict]]:
    """Each device count's results, `rounds` alternating fresh-process runs each."""
    out: dict[int, list[dict]] = {d: [] for d in devices}
    for r in range(rounds):
        for d in devices if r % 2 == 0 else devices[::-1]:
            out[d].append(_run(d, steps, width, pool))
    return out


def table(results: dict[int, list[dict]], *, steps: int, width: float, pool: int) -> str:
    one = min(results)
    step = {d: [r["s_per_step"] for r in rs] for d, rs in results.items()}
    # Seconds per image, so that the speed-up reads the same way as training's.
    infer = {d: [1 / r["img_per_s"] for r in rs] for d, rs in results.items()}
    lines = [
        "| host devices | train: s / step (median) | speed-up | pool inference: img / s "
        "(median) | speed-up |",
        "|---|---|---|---|---|",
    ]
    for d in results:
        train_up = timing.speedup(step[d], step[one]) if d != one else 1.0
        infer_up = timing.speedup(infer[d], infer[one]) if d != one else 1.0
        lines.append(
            f"| {d} | {timing.median(step[d]):.4f} | {train_up:.2f}x | "
            f"{1 / timing.median(infer[d]):,.0f} | {infer_up:.2f}x |"
        )
    lines += [
        "",
        f"VGG16 width {width:g}: `bal_jax.train.fit`, batch 64, {steps} steps, and "
        f"`bal_jax.train.predict` over {pool:,} images, batch 512, each after a compile run; "
        f"{len(step[one])} alternating rounds of fresh processes; speed-up over {one} "
        "device: median of the per-round ratios.",
    ]
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}")
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    devices = sorted(
        {int(d) for d in flags.FLAGS.devices} if flags.FLAGS.devices else {1, 2, ncpu or 1}
    )
    if devices[0] < 1 or 64 % devices[-1]:
        sys.exit("error: --devices must be positive divisors of the batch size 64")
    t0 = time.perf_counter()
    sizes = dict(steps=flags.FLAGS.steps, width=flags.FLAGS.width, pool=flags.FLAGS.pool)
    results = measure(devices, rounds=flags.FLAGS.rounds, **sizes)
    text = "\n".join(
        [
            "# Training and pool-inference speed by XLA host device count",
            "",
            "Command: `" + " ".join(["python -m benchmarks.host_devices", *sys.argv[1:]]) + "`",
            "",
            timing.format_kv_table(timing.machine_description()),
            "",
            table(results, **sizes),
            "",
            f"Wall time {time.perf_counter() - t0:.0f} s.",
            "",
        ]
    )
    print(text)
    if flags.FLAGS.out:
        with open(flags.FLAGS.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    define_flags()
    app.run(main)
