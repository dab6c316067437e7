"""Issue 5 item 5: wall time of one full small-budget BAL run on real CIFAR-10, by phase.

    python -m benchmarks.bal_run                 # writes benchmarks/bal_run.md

Runs the runner's own code path (`experiments.pipeline.run_experiment`) on the
`cifar10_cpu` preset (10,000-image pool of the shared CIFAR-10 JPEGs) at VGG16 width 1/4
with reduced epochs and a fixed beta (no search), in a fresh temporary workdir, then splits
the wall time into the phases the runner records.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

from benchmarks import timing

SETTINGS = dict(width=0.25, pretext_epochs=3, epochs=10, methods=("bal",), beta=1.0, seeds=(0,))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(timing.REPO_ROOT, "benchmarks", "bal_run.md"))
    parser.add_argument(
        "--cpu_devices",
        type=int,
        default=None,
        help="XLA host devices on a CPU (default: one per core, as experiments.main)",
    )
    args = parser.parse_args(argv)
    from bal_jax import parallel

    parallel.use_cpu_devices(args.cpu_devices)
    from experiments import config as config_lib
    from experiments import pipeline

    cfg = config_lib.override(config_lib.cifar10_cpu(), **SETTINGS)
    workdir = tempfile.mkdtemp(prefix="bal_run-")
    t0 = time.perf_counter()
    records = pipeline.run_experiment(
        cfg, workdir, pretext_dir=os.path.join(workdir, "pretext"), log=print
    )
    wall = time.perf_counter() - t0
    with open(os.path.join(workdir, "meta.json")) as f:
        info = json.load(f)["seeds"]["0"]["phases"]
    shutil.rmtree(workdir)
    phases = {
        "pretext training": info["pretext_s"],
        "features (+ rotation losses)": info["features_s"],
        "clustering (K-means + CDD order)": info["clustering_s"],
        "main-task training": sum(r["seconds"]["training"] for r in records),
        "selection (pool inference + sub-pool + sampler)": sum(
            r["seconds"]["predict"] + r["seconds"]["selection"] for r in records
        ),
        "evaluation (test + validation)": sum(r["seconds"]["evaluation"] for r in records),
    }
    rest = wall - sum(phases.values())
    lines = [
        "# One small-budget BAL run on real CIFAR-10, by phase",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in timing.machine_description()),
        "",
        f"Settings: preset `cifar10_cpu` with {SETTINGS} (pool 10,000, validation 1,000, "
        f"test 10,000; budget 2..10% in 5 cycles of 200). Command: `python -m benchmarks.bal_run`.",
        "",
        "| phase | seconds | share |",
        "|---|---|---|",
    ]
    for name, s in [*phases.items(), ("data loading, checkpoints, reports", rest)]:
        lines.append(f"| {name} | {s:.1f} | {100 * s / wall:.0f}% |")
    lines += [
        f"| **total** | **{wall:.1f}** | |",
        "",
        "Test accuracy per cycle: "
        + ", ".join(f"{100 * r['accuracy']:.1f}%" for r in records)
        + ".",
        "",
    ]
    text = "\n".join(lines)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
