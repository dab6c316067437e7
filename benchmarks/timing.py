"""Timing harness: alternating repetitions, medians, ratios, peak memory and the markdown table.

Every comparison runs its sides round-robin (A, B, A, B, ...) in one process after a warm-up
call per side, so a slow minute of the machine hits both sides alike; the speedup of a row is the
median of the per-repetition ratios. Peak memory is measured per side in a fresh process
(``python -m benchmarks.worker peak ...``) so the two sides never share a high-water mark.

This module imports only the standard library: the pure parts (``median``, ``speedup``,
``format_table``) are unit-tested in ``tests/benchmarks_test.py`` without JAX or PyTorch.

Usage::

  timings = alternate({"bal_jax": run_jax, "torch": run_torch}, reps=5)
  ratio = speedup(timings.times["bal_jax"], timings.times["torch"])
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_PREFIX = "BENCH_RESULT "


class Timings(NamedTuple):
    """Wall-clock seconds of an alternating run.

    Attributes:
      first: seconds of each side's first call (for JAX: tracing + compilation + one run).
      times: seconds of each side's timed repetitions, in the order they ran.
      infos: what each side's last call returned (e.g. the number of k-means iterations).
    """

    first: dict[str, float]
    times: dict[str, list[float]]
    infos: dict[str, Any]


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence of finite numbers."""
    values = list(values)
    if not values:
        raise ValueError("median of an empty sequence")
    if any(v != v or v in (float("inf"), float("-inf")) for v in values):
        raise ValueError(f"median of non-finite values: {values}")
    return statistics.median(values)


def speedup(times_ours: Sequence[float], times_ref: Sequence[float]) -> float:
    """How many times faster ours is than the reference: median of ``ref_i / ours_i``.

    The pairs come from the same alternating round, so a slow stretch of the machine that hits
    both sides cancels out of each ratio.

    Args:
      times_ours: seconds per repetition of our side, same length as ``times_ref``.
      times_ref: seconds per repetition of the reference side.

    Returns:
      The median ratio; above 1 means ours is faster.
    """
    if len(times_ours) != len(times_ref) or not times_ours:
        raise ValueError(
            f"speedup needs two equally long, non-empty lists, got {len(times_ours)} and "
            f"{len(times_ref)}"
        )
    if min(times_ours) <= 0 or min(times_ref) <= 0:
        raise ValueError("speedup needs positive times")
    return median([r / o for o, r in zip(times_ours, times_ref, strict=True)])


def alternate(fns: Mapping[str, Callable[[], Any]], *, reps: int, warmup: int = 1) -> Timings:
    """Times ``fns`` round-robin: warm-up calls of each side first, then ``reps`` rounds A, B, ...

    Each function must finish its work before it returns (``jax.block_until_ready``).

    Args:
      fns: side name -> zero-argument function doing one unit of work; what it returns is kept in
        ``infos``.
      reps: number of timed rounds (>= 1).
      warmup: untimed calls per side before the rounds (>= 0); the first one's time is
        reported in ``first`` (for JAX it holds the compilation).

    Returns:
      ``Timings``.
    """
    if reps < 1 or warmup < 0:
        raise ValueError(f"need reps >= 1 and warmup >= 0, got {reps} and {warmup}")
    first, infos = {}, {}
    for name, fn in fns.items():
        for i in range(warmup):
            start = time.perf_counter()
            infos[name] = fn()
            if i == 0:
                first[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            infos[name] = fn()
            times[name].append(time.perf_counter() - start)
    return Timings(first=first, times=times, infos=infos)


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 / (1024 if sys.platform == "darwin" else 1)


def rss_mb() -> float:
    """This process's current resident memory in MiB (VmRSS), or NaN where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def run_worker(mode: str, case: Mapping[str, Any], *, timeout: float | None = None) -> dict:
    """Runs ``python -m benchmarks.worker MODE CASE_JSON`` in a fresh process.

    Returns:
      The worker's result dict, or ``{"error": ...}`` when it crashed, timed out or printed none.
    """
    cmd = [sys.executable, "-m", "benchmarks.worker", mode, json.dumps(dict(case))]
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    try:
        proc = subprocess.run(
            cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {timeout} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {"error": f"worker exit {proc.returncode}: " + " | ".join(tail)}


def emit_result(result: Mapping[str, Any]) -> None:
    """Prints a worker's result on the line ``run_worker`` looks for."""
    print(RESULT_PREFIX + json.dumps(dict(result)), flush=True)


# ----------------------------------------------------------------------------------------------
# The table.


@dataclasses.dataclass
class Row:
    """One line of the results table.

    Attributes:
      benchmark: e.g. "train step".
      setting: e.g. "VGG16-BN width 1/4, batch 128".
      ours: bal_jax's figure (images/s or seconds, per ``unit``), None when it could not run.
      ref: the reference's figure, None when it could not run.
      ref_name: e.g. "PyTorch (channels_last)".
      unit: "img/s" (higher is better) or "s" (lower is better).
      speedup: bal_jax over the reference (>1: bal_jax faster), None when either side is missing.
      peak_mb: peak resident MiB of (bal_jax, reference), each in its own process; None: not
        measured.
      notes: compile time, iterations, why a side is missing, ...
    """

    benchmark: str
    setting: str
    ours: float | None
    ref: float | None
    ref_name: str
    unit: str
    speedup: float | None = None
    peak_mb: tuple[float | None, float | None] = (None, None)
    notes: str = ""


def format_value(value: float | None, unit: str) -> str:
    """'1,234 img/s', '0.123 s', '12.3 s' or 'not available'."""
    if value is None:
        return "not available"
    if unit == "s":
        return f"{value:.3g} s" if value < 100 else f"{value:,.0f} s"
    if unit == "img/s":
        return f"{value:.1f} img/s" if value < 100 else f"{value:,.0f} img/s"
    raise ValueError(f"unknown unit {unit!r}")


def format_speedup(value: float | None) -> str:
    """'1.23x' or 'n/a'."""
    return "n/a" if value is None else f"{value:.2f}x"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


TABLE_HEADER = (
    "| benchmark | setting | bal_jax | reference | speedup (bal_jax vs ref) "
    "| peak MB bal_jax / ref | notes |"
)


def format_table(rows: Sequence[Row]) -> str:
    """The rows as a GitHub markdown table (header, separator, one line per row)."""
    lines = [TABLE_HEADER, "|" + "---|" * 7]
    for r in rows:
        ref = format_value(r.ref, r.unit)
        if r.ref is not None:
            ref = f"{ref} ({r.ref_name})"
        else:
            ref = f"{r.ref_name}: {ref}"
        cells = [
            r.benchmark,
            r.setting,
            format_value(r.ours, r.unit),
            ref,
            format_speedup(r.speedup),
            f"{_mb(r.peak_mb[0])} / {_mb(r.peak_mb[1])}",
            r.notes,
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def format_kv_table(pairs: Sequence[tuple[str, str]]) -> str:
    """Key/value pairs (the machine description) as a two-column markdown table."""
    lines = ["| | |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in pairs]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The machine.


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> str:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


def load_average() -> str:
    """'1.00 / 0.50 / 0.20' (1, 5, 15 minutes), or 'unknown'."""
    if not hasattr(os, "getloadavg"):
        return "unknown"
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_description() -> list[tuple[str, str]]:
    """What the numbers were measured on: CPU, cores, memory, versions, XLA flags, date, load."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return [
        ("date (UTC)", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")),
        ("CPU", _cpu_model()),
        ("cores (logical / usable)", f"{os.cpu_count()} / {usable}"),
        ("memory", _mem_total_gib()),
        ("OS", platform.platform()),
        ("python", platform.python_version()),
        (
            "jax / jaxlib",
            f"{_version('jax')} / {_version('jaxlib')}",
        ),
        ("flax / optax", f"{_version('flax')} / {_version('optax')}"),
        ("torch", _version("torch")),
        ("scikit-learn", _version("scikit-learn")),
        ("numpy", _version("numpy")),
        ("XLA_FLAGS", os.environ.get("XLA_FLAGS", "(unset)")),
        (
            "OMP / OPENBLAS / MKL_NUM_THREADS",
            " / ".join(
                os.environ.get(v, "(unset)")
                for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
            ),
        ),
        ("load average (1/5/15 min) at start", load_average()),
        ("bal_jax commit", _git_commit()),
    ]
