"""Runs the whole benchmark suite of issue 5 and writes a markdown table.

Usage::

  python -m benchmarks.run                      # full suite (the lead's run, quiet machine)
  python -m benchmarks.run --quick              # tiny sizes, 2 reps: checks the plumbing only
  python -m benchmarks.run --only=kmeans,select --out=/tmp/results.md

On a CPU the bal_jax sides run on one XLA host device per core (``--cpu_devices=1``: one), as
``experiments.main`` does; the training and inference sides shard each batch over them.

Groups (``--only``): train, infer, kmeans, select (sub-pool + confidence and k-center greedy),
scaling (clustering and selection time against pool size). Every timing runs in a fresh
worker process (``benchmarks.worker``) that alternates the sides; each side's peak memory is
measured in its own fresh process. Raw numbers go next to the table as JSON (``--out`` with a
``.json`` suffix). Nothing here imports JAX or PyTorch, so the suite driver stays small.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from typing import Any

from benchmarks import timing

GROUPS = ("train", "infer", "kmeans", "select", "scaling")
REF_NAMES = {
    "torch": "PyTorch",
    "torch_cl": "PyTorch channels_last",
    "sklearn": "scikit-learn",
    "numpy": "NumPy",
    "matmul": "the matmul limit",
}
WIDTH_NAMES = {1.0: "1", 0.5: "1/2", 0.25: "1/4", 0.125: "1/8"}


@dataclasses.dataclass
class Spec:
    """One timing case and how to show it."""

    group: str
    benchmark: str
    setting: str
    case: dict[str, Any]
    refs: tuple[str, ...]
    unit: str
    peak: bool = True


def _width(w: float) -> str:
    return WIDTH_NAMES.get(w, f"{w:g}")


def _n(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


# ----------------------------------------------------------------------------------------------
# What runs. Every size here is the one the table reports.


@dataclasses.dataclass(frozen=True)
class Sizes:
    train: tuple[tuple[float, int], ...]  # (width, steps per timed call)
    train_batch: int
    infer: tuple[tuple[float, int], ...]  # (width, pool images per timed call)
    infer_batch: int
    dim: int
    kmeans: tuple[tuple[int, int, int, float, int | None], ...]  # (N, K, iters, tol, chunk)
    chunk: int  # chunk_size for pools above it
    select: tuple[int, ...]
    kcenter: tuple[int, ...]
    kcenter_k: int
    # The NumPy k-center reference takes minutes per call at 1M points (the target
    # there is absolute: under a minute); above this N only bal_jax runs.
    kcenter_ref_max: int
    # scikit-learn's KMeans on 1M x 512 with K=200 (with bal_jax's side before blocks and an
    # unblocked k-means++ pass) ran over 20 minutes for one row on this machine; above this N
    # only bal_jax runs (its time and peak memory are the row).
    kmeans_ref_max: int
    scaling: tuple[int, ...]
    scaling_k: int
    reps: int
    reps_big: int  # for the 1M-point cases
    train_reps: int
    train_warmup: int  # untimed calls per side before the rounds (the first one compiles)
    vgg_peak: bool  # peak-memory processes for train/infer (each recompiles the network)


FULL = Sizes(
    train=((1.0, 2), (0.25, 8), (0.125, 16)),
    train_batch=128,
    infer=((1.0, 1024), (0.25, 4096), (0.125, 4096)),
    infer_batch=512,
    dim=512,
    kmeans=(
        (50_000, 10, 20, 0.0, None),
        (50_000, 100, 20, 0.0, None),
        (50_000, 200, 20, 0.0, None),
        (50_000, 10, 300, 1e-4, None),
        (1_000_000, 200, 20, 0.0, 65_536),
    ),
    chunk=65_536,
    select=(50_000, 1_000_000),
    kcenter=(50_000, 1_000_000),
    kcenter_k=1000,
    kcenter_ref_max=50_000,
    kmeans_ref_max=50_000,
    scaling=(10_000, 50_000, 200_000, 1_000_000),
    scaling_k=200,
    reps=3,
    reps_big=1,
    train_reps=5,
    train_warmup=2,
    vgg_peak=False,  # VGG peak memory is not a target; saves a recompile per side and row
)

# One small case per group; the scaling table reuses them (cached), so it adds no work, and the
# VGG rows skip their peak-memory processes (the kmeans/select rows exercise that path).
QUICK = Sizes(
    train=((0.125, 1),),
    train_batch=32,
    infer=((0.125, 256),),
    infer_batch=128,
    dim=64,
    kmeans=((4_000, 8, 5, 0.0, 1_024),),
    chunk=1_024,
    select=(4_000,),
    kcenter=(4_000,),
    kcenter_k=40,
    kcenter_ref_max=4_000,
    kmeans_ref_max=4_000,
    scaling=(4_000,),
    scaling_k=8,
    reps=2,
    reps_big=2,
    train_reps=2,
    train_warmup=1,
    vgg_peak=False,
)


def _kmeans_case(sz: Sizes, n, k, iters, tol, chunk, reps) -> dict:
    # Beyond scikit-learn's sizes, the reference is the machine's own limit: the Lloyd
    # iterations' distance products alone (cases.py, side "matmul").
    sides = ["bal_jax", "sklearn"] if n <= sz.kmeans_ref_max else ["bal_jax", "matmul"]
    return dict(
        bench="kmeans",
        n=n,
        d=sz.dim,
        k=k,
        iters=iters,
        tol=tol,
        chunk=chunk,
        reps=reps,
        sides=sides,
    )


def _select_case(n: int, reps: int) -> dict:
    # CIFAR small budget: 5 cycles of 2% of the pool, the middle cycle, beta 1.2.
    return dict(bench="select", n=n, k=max(1, n // 50), cycles=5, cycle=2, beta=1.2, reps=reps)


def _kcenter_case(sz: Sizes, n: int, reps: int) -> dict:
    k = sz.kcenter_k
    chunk = sz.chunk if n > sz.chunk else None
    sides = ["bal_jax", "numpy"] if n <= sz.kcenter_ref_max else ["bal_jax"]
    return dict(bench="kcenter", n=n, d=sz.dim, k=k, labeled=k, chunk=chunk, reps=reps, sides=sides)


def _reps(sz: Sizes, n: int) -> int:
    return sz.reps_big if n >= 1_000_000 else sz.reps


def plan(sz: Sizes, groups: set[str]) -> list[Spec]:
    """The table's rows, in order."""
    specs = []
    if "train" in groups:
        for width, steps in sz.train:
            case = dict(
                bench="train",
                width=width,
                batch=sz.train_batch,
                steps=steps,
                reps=sz.train_reps,
                warmup=sz.train_warmup,
                sides=["bal_jax", "torch", "torch_cl"],
            )
            specs.append(
                Spec(
                    "train",
                    "train step",
                    f"VGG16-BN width {_width(width)}, batch {sz.train_batch}, 3x32x32, "
                    f"{steps} step{'s' if steps > 1 else ''} per timed call",
                    case,
                    ("torch", "torch_cl"),
                    "img/s",
                    peak=sz.vgg_peak,
                )
            )
    if "infer" in groups:
        for width, n in sz.infer:
            case = dict(
                bench="infer",
                width=width,
                n=n,
                batch=sz.infer_batch,
                reps=sz.train_reps,
                warmup=sz.train_warmup,
                sides=["bal_jax", "torch", "torch_cl"],
            )
            specs.append(
                Spec(
                    "infer",
                    "pool inference (probs + features)",
                    f"VGG16-BN width {_width(width)}, {n} images, batch {sz.infer_batch}",
                    case,
                    ("torch", "torch_cl"),
                    "img/s",
                    peak=sz.vgg_peak,
                )
            )
    if "kmeans" in groups:
        for n, k, iters, tol, chunk in sz.kmeans:
            case = _kmeans_case(sz, n, k, iters, tol, chunk, _reps(sz, n))
            stop = f"max_iter {iters}, tol {tol:g}" + (" (to convergence)" if tol > 0 else "")
            chunked = f", chunk_size {chunk}" if chunk else ""
            specs.append(
                Spec(
                    "kmeans",
                    "k-means++ + Lloyd + CDD",
                    f"{_n(n)} x {sz.dim}, K={k}, {stop}{chunked}",
                    case,
                    tuple(side for side in case["sides"] if side != "bal_jax"),
                    "s",
                )
            )
    if "select" in groups:
        for n in sz.select:
            case = _select_case(n, _reps(sz, n))
            specs.append(
                Spec(
                    "select",
                    "BAL selection step (sub-pool + least confidence)",
                    f"N={_n(n)}, 10 classes, cycle 3 of 5, k={case['k']}, beta 1.2",
                    case | {"sides": ["bal_jax", "numpy"]},
                    ("numpy",),
                    "s",
                )
            )
        for n in sz.kcenter:
            case = _kcenter_case(sz, n, _reps(sz, n))
            specs.append(
                Spec(
                    "select",
                    "k-center greedy (Core-Set)",
                    f"{_n(n)} x {sz.dim}, k={case['k']}, {case['labeled']} labeled"
                    + (f", chunk_size {case['chunk']}" if case["chunk"] else ""),
                    case,
                    ("numpy",),
                    "s",
                )
            )
    return specs


def scaling_plan(sz: Sizes) -> list[tuple[int, dict[str, dict]]]:
    """Per pool size N, the clustering and selection cases (same settings as the main rows)."""
    out = []
    for n in sz.scaling:
        chunk = sz.chunk if n > sz.chunk else None
        iters = 5 if sz is QUICK else 20
        out.append(
            (
                n,
                {
                    "kmeans": _kmeans_case(sz, n, sz.scaling_k, iters, 0.0, chunk, _reps(sz, n)),
                    "select": _select_case(n, _reps(sz, n)) | {"sides": ["bal_jax", "numpy"]},
                    "kcenter": _kcenter_case(sz, n, _reps(sz, n)),
                },
            )
        )
    return out


# ----------------------------------------------------------------------------------------------
# Running and turning results into rows.


class Runner:
    """Runs workers, caching by case so a case shared by two tables runs once."""

    def __init__(self, log=sys.stderr):
        self.cache: dict[str, dict] = {}
        self.log = log
        self.start = time.perf_counter()

    def _run(self, mode: str, case: dict) -> dict:
        key = mode + json.dumps(case, sort_keys=True)
        if key not in self.cache:
            t0 = time.perf_counter()
            self.cache[key] = timing.run_worker(mode, case)
            err = self.cache[key].get("error") or self.cache[key].get("errors") or ""
            print(
                f"[{time.perf_counter() - self.start:7.1f} s] {mode} {json.dumps(case)} "
                f"({time.perf_counter() - t0:.1f} s) {err}",
                file=self.log,
                flush=True,
            )
        return self.cache[key]

    def time(self, case: dict) -> dict:
        return self._run("time", case)

    def peak(self, case: dict, side: str) -> dict:
        c = {k: v for k, v in case.items() if k not in ("sides", "reps", "warmup")}
        return self._run("peak", c | {"side": side})


def _side_value(res: dict, side: str, unit: str) -> float | None:
    times = res.get("times", {}).get(side)
    if not times:
        return None
    med = timing.median(times)
    return res["work"][side] / med if unit == "img/s" else med


def _side_error(res: dict, side: str) -> str | None:
    if "error" in res:
        return res["error"]
    return res.get("errors", {}).get(side)


def _notes(res: dict, ref: str, unit: str) -> str:
    notes = []
    for side in ("bal_jax", ref):
        err = _side_error(res, side)
        if err:
            notes.append(f"{side}: {err}")
    infos = res.get("infos", {})
    ours, theirs = infos.get("bal_jax") or {}, infos.get(ref) or {}
    times = res.get("times", {})
    if "bal_jax" in res.get("first", {}) and times.get("bal_jax"):
        med = timing.median(times["bal_jax"])
        first = res["first"]["bal_jax"]
        notes.append(f"bal_jax first call {first:.1f} s (compile ~{max(0.0, first - med):.1f} s)")
    if "iters" in ours and "iters" in theirs:
        notes.append(f"iterations {ours['iters']} / {theirs['iters']}")
        if theirs.get("inertia"):
            notes.append(f"inertia ratio {ours['inertia'] / theirs['inertia']:.4f}")
    agree = res.get("agreement", {}).get(ref)
    if agree:
        if not agree["distinct"]:
            notes.append("bal_jax PICKED DUPLICATES")
        if agree["same_order"]:
            notes.append("same picks in the same order")
        elif agree["overlap"] == 1.0:
            notes.append("same set of picks, different order")
        else:
            notes.append(f"picks overlap {100 * agree['overlap']:.1f}% with the reference's")
    params = res.get("num_params", {})
    if params.get("bal_jax") and params.get(ref) and params["bal_jax"] != params[ref]:
        notes.append(f"PARAMETER COUNTS DIFFER: {params['bal_jax']} vs {params[ref]}")
    elif params.get("bal_jax"):
        notes.append(f"{params['bal_jax']:,} params")
    return "; ".join(notes)


def rows_for(spec: Spec, runner: Runner, *, peaks: bool) -> list[timing.Row]:
    res = runner.time(spec.case)
    peak, base = {}, {}
    if peaks and spec.peak and "error" not in res:
        for side in spec.case["sides"]:
            if side in res.get("errors", {}):
                continue
            p = runner.peak(spec.case, side)
            peak[side], base[side] = p.get("peak_mb"), p.get("base_mb")
    rows = []
    for ref in spec.refs:
        ours, theirs = _side_value(res, "bal_jax", spec.unit), _side_value(res, ref, spec.unit)
        ratio = None
        if ours is not None and theirs is not None:
            ratio = timing.speedup(res["times"]["bal_jax"], res["times"][ref])
        rows.append(
            timing.Row(
                benchmark=spec.benchmark,
                setting=spec.setting,
                ours=ours,
                ref=theirs,
                ref_name=REF_NAMES[ref],
                unit=spec.unit,
                speedup=ratio,
                peak_mb=(peak.get("bal_jax"), peak.get(ref)),
                notes=_notes(res, ref, spec.unit)
                + (
                    f"; resident before the run (imports + data) {base['bal_jax']:,.0f} / "
                    f"{base[ref]:,.0f} MB"
                    if base.get("bal_jax") and base.get(ref)
                    else ""
                ),
            )
        )
    return rows


def _scaling_cell(res: dict, ref: str) -> str:
    ours, theirs = _side_value(res, "bal_jax", "s"), _side_value(res, ref, "s")
    text = f"{timing.format_value(ours, 's')} / {timing.format_value(theirs, 's')}"
    if ours is not None and theirs is not None:
        ratio = timing.speedup(res["times"]["bal_jax"], res["times"][ref])
        text += f" ({timing.format_speedup(ratio)})"
    return text


def scaling_table(sz: Sizes, runner: Runner) -> str:
    k = sz.scaling_k
    lines = [
        f"| N | k-means++ + Lloyd + CDD, K={k}, {5 if sz is QUICK else 20} iterations: "
        "bal_jax / scikit-learn | BAL selection step (k = 2% of N): bal_jax / NumPy "
        f"| k-center greedy, k={sz.kcenter_k}: bal_jax / NumPy |",
        "|---|---|---|---|",
    ]
    for n, cs in scaling_plan(sz):
        cells = [
            _scaling_cell(runner.time(cs["kmeans"]), "sklearn"),
            _scaling_cell(runner.time(cs["select"]), "numpy"),
            _scaling_cell(runner.time(cs["kcenter"]), "numpy"),
        ]
        lines.append(f"| {_n(n)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _legend(sz: Sizes, quick: bool) -> str:
    quick_note = "QUICK MODE: tiny sizes, the numbers mean nothing; run without --quick."
    return f"""\
How to read it: each row's sides ran alternately (A, B, A, B, ...) in one fresh process after
warm-up; the figures are medians over {sz.reps} rounds ({sz.reps_big} for 1M-point cases,
{sz.train_reps} for train/inference), and the speedup is the median of the per-round ratios
reference time / bal_jax time (above 1: bal_jax is faster). JAX compilation is excluded from
the figures and shown in the notes (first call minus the median). Peak MB: resident-memory
high-water mark of a fresh process running that side once (data included, compilation
included), measured separately for each side.

Settings: train step = bal_jax.train.fit for one epoch of the timed batches (random crop +
flip + normalise + forward + CE + backward + SGD momentum 0.9, weight decay 5e-4, as jitted
by bal_jax) vs the authors' VGG16-BN in PyTorch with the same augmentation done batched in
torch; random uint8 images. Pool inference = bal_jax.train.predict + softmax (as the
active-learning loop calls it) vs eval-mode PyTorch. K-means data = 10 overlapping Gaussian
blobs (centers N(0, 0.3^2 I), unit noise), float32, the same array on both sides;
scikit-learn KMeans(init='k-means++', n_init=1, same max_iter and tol, random_state=0) +
transform + the two smallest distances. Beyond scikit-learn's sizes the reference is the
machine's matmul limit: only the distance products the row needs (pool x centers at the same
precision, with the row minimum), once per Lloyd iteration + the final assignments + the CDD,
timed in the same process. With tol 0 both sides stop only at max_iter or when
no assignment changes (scikit-learn's rule, which bal_jax copies); iteration counts are in
the notes. The selection step = bal_jax.methods.bal_select (sub-pool window + least
confidence) on NumPy inputs vs the same computation in vectorised NumPy; k-center greedy =
bal_jax.diversity.kcenter_greedy vs an O(N)-memory NumPy greedy. The authors' Core-Set forms
an N x N distance matrix (50k: 10 GB, 1M: 4 TB in float32); neither side here does.
{quick_note if quick else ""}
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 reps (plumbing)")
    parser.add_argument("--only", default=",".join(GROUPS), help=f"subset of {GROUPS}")
    parser.add_argument(
        "--out",
        default=None,
        help="markdown output (default benchmarks/results.md; with --quick a temp file, so a "
        "plumbing check never overwrites the real table)",
    )
    parser.add_argument("--no-peak", action="store_true", help="skip peak-memory processes")
    parser.add_argument(
        "--cpu_devices",
        type=int,
        default=None,
        help="XLA host devices of the bal_jax sides on a CPU (default: one per core, as the "
        "runner; a count already in XLA_FLAGS is kept)",
    )
    args = parser.parse_args(argv)
    # The workers inherit the environment: one XLA device per core, as experiments.main.
    from bal_jax import parallel

    parallel.use_cpu_devices(args.cpu_devices)
    groups = {g.strip() for g in args.only.split(",") if g.strip()}
    if not groups <= set(GROUPS):
        parser.error(f"--only takes a subset of {GROUPS}, got {sorted(groups - set(GROUPS))}")
    sz = QUICK if args.quick else FULL
    if args.out is None:
        args.out = (
            os.path.join(tempfile.gettempdir(), "bal_jax_benchmarks_quick.md")
            if args.quick
            else os.path.join(timing.REPO_ROOT, "benchmarks", "results.md")
        )
    machine = timing.machine_description()
    runner = Runner()
    rows = []
    for spec in plan(sz, groups):
        rows += rows_for(spec, runner, peaks=not args.no_peak)
    scaling = scaling_table(sz, runner) if "scaling" in groups else None
    elapsed = time.perf_counter() - runner.start
    machine.append(("load average (1/5/15 min) at end", timing.load_average()))

    cmd = "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv)
    parts = [
        "# bal_jax benchmarks" + (" (QUICK MODE: plumbing check only)" if args.quick else ""),
        "",
        f"Command: `{cmd.strip()}` ({elapsed / 60:.1f} min in all).",
        "",
        "## Machine",
        "",
        timing.format_kv_table(machine),
        "",
    ]
    if rows:
        parts += [
            "## bal_jax against the reference implementations",
            "",
            timing.format_table(rows),
            "",
        ]
    if scaling:
        parts += [
            "## Clustering and selection time against pool size",
            "",
            "Each cell: bal_jax / reference (speedup), same settings as the rows above.",
            "",
            scaling,
            "",
        ]
    parts += ["## Method", "", _legend(sz, args.quick)]
    text = "\n".join(parts)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    raw = os.path.splitext(args.out)[0] + ".json"
    with open(raw, "w") as f:
        json.dump(
            {
                "machine": dict(machine),
                "command": cmd,
                "rows": [dataclasses.asdict(r) for r in rows],
                "raw": runner.cache,
            },
            f,
            indent=1,
        )
    print(text)
    print(f"wrote {args.out} and {raw}", file=sys.stderr)


if __name__ == "__main__":
    main()
