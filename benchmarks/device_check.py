r"""One prepared check of an accelerator: tests, train/inference speed, selection, a tiny run.

    python -m benchmarks.device_check                      # on a GPU/TPU: about 5-8 minutes
    python -m benchmarks.device_check --quick              # toy sizes on any machine (< 1 min)

Writes one markdown table (``--out``, default ``benchmarks/results_device.md``; ``--quick`` writes
to a temp file unless ``--out`` is given) with:

- the devices and library versions;
- the GPU-runnable part of the test suite (``--tests``, a pytest selection, in a subprocess);
- training step images/s at width 1, batch 128, float32 and bfloat16, with model FLOPs
  utilisation (MFU): XLA's ``cost_analysis()`` FLOPs of the compiled step times steps/s, over
  the device's peak (``PEAK_TFLOPS``; 'unknown' for an unlisted device);
- pool inference images/s (``bal_jax.train.predict``, as the active-learning loop calls it);
- ``kmeans`` + ``cdd`` on 1,000,000 x 512 with K = 200, and k-center greedy (k = 1,000) on
  1,000,000 x 512;
- one tiny end-to-end ``experiments.main`` pass of the ``cifar10`` preset on the shared CIFAR-10
  JPEGs (1 epoch, a few hundred images).

Every section is timed and guarded: one that fails or times out reports why in its row and the
others still run. ``tests/device_check_test.py`` runs ``--quick`` on the CPU so this cannot rot.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import timing

# Dense peak TFLOP/s per chip by device kind substring: (bfloat16, float32 as JAX runs it by
# default: TF32 tensor cores on NVIDIA Ampere and later, one bf16 pass on TPUs). Vendor figures
# without sparsity; H100/H200 are the SXM parts.
PEAK_TFLOPS: dict[str, tuple[float | None, float | None]] = {
    "H200": (989.0, 494.7),
    "H100": (989.0, 494.7),
    "A100": (312.0, 156.0),
    "L4": (121.0, 60.0),
    "A10G": (70.0, 35.0),
    "T4": (None, 8.1),  # no bf16 tensor cores
    "V100": (None, 15.7),
    "TPU v4": (275.0, 275.0),
    "TPU v5 lite": (197.0, 197.0),  # v5e
    "TPU v5p": (459.0, 459.0),
    "TPU v5": (459.0, 459.0),
    "TPU v6 lite": (918.0, 918.0),  # v6e
}

FULL = dict(
    width=1.0,
    train_batch=128,
    train_steps=30,
    infer_images=20480,
    infer_batch=512,
    select_n=1_000_000,
    select_d=512,
    clusters=200,
    kmeans_iters=20,
    kcenter_k=1000,
    tests="tests/budgets_test.py tests/subpools_test.py tests/kmeans_test.py "
    "tests/sampling_test.py tests/methods_test.py tests/models_test.py tests/train_test.py",
    tests_timeout=240,
    e2e_timeout=240,
)
QUICK = dict(
    width=1 / 16,
    train_batch=8,
    train_steps=2,
    infer_images=64,
    infer_batch=32,
    select_n=2000,
    select_d=16,
    clusters=5,
    kmeans_iters=5,
    kcenter_k=10,
    tests="tests/budgets_test.py",
    tests_timeout=120,
    e2e_timeout=600,  # a shared 2-core CPU compiles every step of the run
)


def define_flags() -> None:
    """The command's flags (defined on demand: other commands own some of the names)."""
    flags.DEFINE_bool("quick", False, "Toy sizes: a plumbing check on any machine.")
    flags.DEFINE_string("out", None, "Markdown output (default benchmarks/results_device.md).")
    flags.DEFINE_string("tests", None, "pytest selection (default: the GPU-runnable files).")
    flags.DEFINE_string(
        "data", "../shared/datasets/cifar10-jpg.tar.gz", "CIFAR-10 JPEG archive or folder (e2e)."
    )
    flags.DEFINE_list("skip", [], "Sections to skip: tests,train,infer,kmeans,kcenter,e2e.")


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    """The device's dense peak TFLOP/s for ``dtype`` from ``PEAK_TFLOPS``, or None if unknown.

    Args:
      device_kind: ``jax.Device.device_kind``, e.g. 'NVIDIA H100 80GB HBM3' or 'TPU v5 lite'.
      dtype: 'bfloat16' or 'float32'.

    Returns:
      TFLOP/s per chip, or None.
    """
    # Longest matching name first, so 'TPU v5 lite' wins over 'TPU v5'.
    for name in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if name.lower() in device_kind.lower():
            bf16, f32 = PEAK_TFLOPS[name]
            return bf16 if dtype == "bfloat16" else f32
    return None


def mfu_text(flops_per_step: float, steps_per_s: float, peak: float | None) -> str:
    """'12.3% of 989 TFLOP/s' or 'unknown (no peak for this device)'."""
    if peak is None or not np.isfinite(flops_per_step):
        return "unknown (no peak for this device)"
    return f"{100 * flops_per_step * steps_per_s / (peak * 1e12):.1f}% of {peak:g} TFLOP/s"


def _devices() -> list[tuple[str, str]]:
    devs = jax.devices()
    rows = [
        ("backend", jax.default_backend()),
        ("devices", f"{len(devs)} x {devs[0].device_kind} ({devs[0].platform})"),
    ]
    stats = getattr(devs[0], "memory_stats", lambda: None)()
    if stats and "bytes_limit" in stats:
        rows.append(("device memory", f"{stats['bytes_limit'] / 2**30:.1f} GiB"))
    for name in ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "libtpu", "flax"):
        version = timing._version(name)
        if version != "not installed":
            rows.append((name, version))
    return rows


def _python(args: list[str], *, timeout: float) -> tuple[subprocess.CompletedProcess | None, float]:
    """Runs ``python ARGS`` from the repository root: (the process or None on timeout, seconds)."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, *args],
            cwd=timing.REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        proc = None
    return proc, time.perf_counter() - t0


def _run_tests(sizes: dict, selection: str) -> list[tuple[str, str, str]]:
    # pyproject's addopts already has -q; a second one would drop the "N passed" summary line.
    # Serial (-n 0): two workers would each claim most of the accelerator's memory.
    args = ["-m", "pytest", "-p", "no:cacheprovider", "-n", "0", *selection.split()]
    proc, seconds = _python(args, timeout=sizes["tests_timeout"])
    if proc is None:
        return [("test suite", f"timed out after {sizes['tests_timeout']} s", selection)]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else f"no output (exit {proc.returncode})"
    failed = [line.split(" ", 1)[1] for line in lines if line.startswith("FAILED ")]
    notes = f"`pytest {selection}`; {seconds:.0f} s"
    if failed:
        notes += "; failed: " + ", ".join(f"`{f}`" for f in failed[:8])
    return [("test suite", summary.strip("= "), notes)]


def _train(sizes: dict) -> list[tuple[str, str, str]]:
    from benchmarks.compiled import compile_train_step

    rows = []
    kind = jax.devices()[0].device_kind
    for dtype in ("float32", "bfloat16"):
        t0 = time.perf_counter()
        compiled, make_args = compile_train_step(
            width=sizes["width"], batch_size=sizes["train_batch"], dtype=dtype
        )
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
        (_, state, *rest), _ = make_args()  # graphdef and the switches are compiled in
        compile_s = time.perf_counter() - t0
        # The compiled executable takes the non-static arguments; `state` is donated each step.
        state, metrics = compiled(state, *rest)
        jax.block_until_ready(metrics)
        t0 = time.perf_counter()
        for _ in range(sizes["train_steps"]):
            state, metrics = compiled(state, *rest)
        jax.block_until_ready((state, metrics))
        steps_per_s = sizes["train_steps"] / (time.perf_counter() - t0)
        mfu = mfu_text(flops, steps_per_s, peak_tflops(kind, dtype))
        rows.append(
            (
                f"train step, width {sizes['width']:g}, batch {sizes['train_batch']}, {dtype}",
                f"{steps_per_s * sizes['train_batch']:,.0f} img/s",
                f"MFU {mfu}; {flops / 1e9:,.1f} GFLOP/step (XLA cost analysis); compile "
                f"{compile_s:.1f} s",
            )
        )
    return rows


def _infer(sizes: dict) -> list[tuple[str, str, str]]:
    from flax import nnx

    from bal_jax import train
    from bal_jax.models import VGG16

    model = VGG16(10, width=sizes["width"], rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (sizes["infer_images"], 32, 32, 3), dtype=np.uint8)
    rows = []
    for dtype in ("float32", "bfloat16"):
        args = dict(batch_size=sizes["infer_batch"], mean=(0.5,) * 3, std=(0.25,) * 3, dtype=dtype)
        t0 = time.perf_counter()
        train.predict(model, images[: sizes["infer_batch"]], **args)  # compile
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        train.predict(model, images, **args)
        rate = images.shape[0] / (time.perf_counter() - t0)
        rows.append(
            (
                f"pool inference (logits + features), width {sizes['width']:g}, {dtype}",
                f"{rate:,.0f} img/s",
                f"{images.shape[0]:,} host images, batch {sizes['infer_batch']}, host-to-device "
                f"copies included; first call {first:.1f} s",
            )
        )
    return rows


def _points(n: int, d: int, *, seed: int) -> jax.Array:
    """(n, d) float32 Gaussian blobs around 10 centers, made on the device."""
    k_centers, k_labels, k_noise = jax.random.split(jax.random.key(seed), 3)
    centers = jax.random.normal(k_centers, (10, d))
    labels = jax.random.randint(k_labels, (n,), 0, 10)
    return centers[labels] + 3.0 * jax.random.normal(k_noise, (n, d))


def _twice(fn: Callable[[], object]) -> tuple[float, float]:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    t1 = time.perf_counter()
    jax.block_until_ready(fn())
    return t1 - t0, time.perf_counter() - t1


def _kmeans(sizes: dict) -> list[tuple[str, str, str]]:
    from bal_jax.kmeans import cdd, kmeans

    n, d, k = sizes["select_n"], sizes["select_d"], sizes["clusters"]
    x = jax.block_until_ready(_points(n, d, seed=1))
    iters = sizes["kmeans_iters"]

    def run():
        res = kmeans(jax.random.key(0), x, k, max_iters=iters, tol=0.0)
        return cdd(x, res.centers)

    first, second = _twice(run)
    return [
        (
            f"kmeans + cdd, {n:,} x {d}, K={k}",
            f"{second:.2f} s",
            f"{iters} Lloyd iterations (tol 0), k-means++ init; first call {first:.1f} s",
        )
    ]


def _kcenter(sizes: dict) -> list[tuple[str, str, str]]:
    from bal_jax.diversity import kcenter_greedy

    n, d, k = sizes["select_n"], sizes["select_d"], sizes["kcenter_k"]
    x = jax.block_until_ready(_points(n, d, seed=2))
    labeled = jnp.arange(n) < n // 100  # 1% labeled
    first, second = _twice(lambda: kcenter_greedy(x, labeled, ~labeled, k))
    return [
        (
            f"k-center greedy, {n:,} x {d}, k={k}",
            f"{second:.2f} s",
            f"{n // 100:,} labeled; first call {first:.1f} s",
        )
    ]


def e2e_args(*, quick: bool, data: str) -> tuple[list[str], str]:
    """The ``experiments.main`` flags of the end-to-end pass, and what it runs in words.

    Args:
      quick: the digits preset at width 1/16 (no data files needed) instead of ``cifar10``.
      data: CIFAR-10 JPEG archive or folder, absolute or relative to the repository root.

    Returns:
      ``(flags, description)``; the flags leave out ``--workdir``.
    """
    if quick:
        args = [
            "--config=digits_cpu",
            "--width=0.0625",
            "--train_subset=300",
            "--val_size=100",
            "--test_subset=100",
            "--eval_batch_size=128",
        ]
        what = "digits_cpu preset at width 1/16"
    else:
        path = data if os.path.isabs(data) else os.path.join(timing.REPO_ROOT, data)
        args = [
            "--config=cifar10",
            f"--dataset=folder:{path}",
            "--train_subset=600",
            "--val_size=100",
            "--test_subset=500",
        ]
        what = "cifar10 preset (width 1) on the shared CIFAR-10 JPEGs"
    # Two cycles of 20% and 40% of the pool, a fixed beta (no search), one epoch each.
    args += [
        "--epochs=1",
        "--pretext_epochs=1",
        "--fractions=0.2,0.4",
        "--beta=3",
        "--method=bal,random",
    ]
    return args, what


def _e2e(sizes: dict, *, quick: bool, data: str) -> list[tuple[str, str, str]]:
    args, what = e2e_args(quick=quick, data=data)
    dataset = [a for a in args if a.startswith("--dataset=folder:")]
    if dataset and not os.path.exists(dataset[0].split(":", 1)[1]):
        return [("end-to-end experiments.main", "skipped", f"no data at {dataset[0]}")]
    workdir = tempfile.mkdtemp(prefix="device_check_")
    args = [*args, f"--workdir={workdir}/run"]
    proc, seconds = _python(["-m", "experiments.main", *args], timeout=sizes["e2e_timeout"])
    if proc is None:
        return [("end-to-end experiments.main", f"timed out after {sizes['e2e_timeout']} s", what)]
    command = "`python -m experiments.main " + " ".join(a for a in args if "workdir" not in a)
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return [
            (
                "end-to-end experiments.main",
                f"failed (exit {proc.returncode})",
                f"{what}; {tail[0][:200]}",
            )
        ]
    return [("end-to-end experiments.main", f"ok in {seconds:.0f} s", f"{what}: {command}`")]


def run_checks(*, quick: bool, tests: str | None, data: str, skip=()) -> str:
    """Runs every section and returns the markdown report.

    Args:
      quick: toy sizes (``QUICK``) instead of the device sizes (``FULL``).
      tests: pytest selection; None for the sizes' default.
      data: CIFAR-10 archive or folder for the end-to-end pass (relative to the repository).
      skip: names of sections to leave out.

    Returns:
      The markdown text.
    """
    sizes = QUICK if quick else FULL
    sections = {
        "tests": lambda: _run_tests(sizes, tests or sizes["tests"]),
        "train": lambda: _train(sizes),
        "infer": lambda: _infer(sizes),
        "kmeans": lambda: _kmeans(sizes),
        "kcenter": lambda: _kcenter(sizes),
        "e2e": lambda: _e2e(sizes, quick=quick, data=data),
    }
    unknown = set(skip) - set(sections)
    if unknown:
        raise ValueError(f"--skip takes {', '.join(sections)}; got {', '.join(sorted(unknown))}")
    machine = _devices() + [
        (k, v)
        for k, v in timing.machine_description()
        if k
        in (
            "date (UTC)",
            "CPU",
            "cores (logical / usable)",
            "python",
            "flax / optax",
            "load average (1/5/15 min) at start",
            "bal_jax commit",
        )
    ]
    rows = []
    t_all = time.perf_counter()
    for name, fn in sections.items():
        if name in skip:
            continue
        t0 = time.perf_counter()
        try:
            rows += fn()
        except Exception as e:  # one broken section must not hide the others
            rows.append((name, "error", f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"))
        print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
    total = time.perf_counter() - t_all
    mode = "--quick (toy sizes)" if quick else "full sizes"
    lines = [
        f"# Device check ({mode})",
        "",
        f"Command: `python -m benchmarks.device_check{' --quick' if quick else ''}`; "
        f"{total:.0f} s in all.",
        "",
        timing.format_kv_table(machine),
        "",
        "| check | result | notes |",
        "|---|---|---|",
        *(f"| {timing._cell(a)} | {timing._cell(b)} | {timing._cell(c)} |" for a, b, c in rows),
        "",
    ]
    return "\n".join(lines)


def main(argv):
    del argv
    text = run_checks(
        quick=flags.FLAGS.quick,
        tests=flags.FLAGS.tests,
        data=flags.FLAGS.data,
        skip=flags.FLAGS.skip,
    )
    out = flags.FLAGS.out
    if out is None:
        out = (
            os.path.join(tempfile.gettempdir(), "device_check_quick.md")
            if flags.FLAGS.quick
            else os.path.join(timing.REPO_ROOT, "benchmarks", "results_device.md")
        )
    with open(out, "w") as f:
        f.write(text)
    print(text)
    print(f"Written to {out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
