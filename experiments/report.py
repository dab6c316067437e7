"""Results files of a run: results.jsonl, summary.md, curves.png, selections.png.

All functions take the list of per-cycle records (dicts as written to results.jsonl).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from bal_jax.atomic import atomic_path, write_text

# Reports and records are written whole or not at all.
atomic_write = write_text


def write_jsonl(path: str, records: Sequence[dict]) -> None:
    atomic_write(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _method_order(records, methods: Sequence[str] | None):
    seen = list(dict.fromkeys(r["method"] for r in records))
    if methods:
        return [m for m in methods if m in seen] + [m for m in seen if m not in methods]
    return seen


def _fraction_grid(corner: str, fractions, rows, cell) -> list[str]:
    """Markdown lines of a method x labeled-fraction table: `cell(method, fraction)` fills it."""
    lines = [
        f"| {corner} | " + " | ".join(f"{100 * f:.1f}%" for f in fractions) + " |",
        "|---|" + "---|" * len(fractions),
    ]
    lines += [f"| {m} | " + " | ".join(cell(m, f) for f in fractions) + " |" for m in rows]
    return lines


def accuracy_table(records: Sequence[dict], methods: Sequence[str] | None = None) -> str:
    """The paper's table layout: one row per method, one column per labeled fraction,
    test accuracy in percent as mean ± std over seeds (sample std; n in the header).

    A cell where any seed's model collapsed (record `collapsed`: it predicts one class) shows
    which seeds failed instead of a number: a constant predictor's accuracy is not a result.
    """
    cells: dict[tuple[str, float], list[float]] = defaultdict(list)
    failed: dict[tuple[str, float], list] = defaultdict(list)
    fractions = sorted({round(r["fraction"], 4) for r in records})
    for r in records:
        acc = r["accuracy"]
        if not math.isfinite(acc):
            raise ValueError(f"non-finite accuracy in record {r}")
        cells[(r["method"], round(r["fraction"], 4))].append(100.0 * acc)
        if r.get("collapsed"):
            failed[(r["method"], round(r["fraction"], 4))].append(r.get("seed", 0))
    seeds = sorted({r.get("seed", 0) for r in records})

    def cell(m, f):
        vals = cells.get((m, f), [])
        if failed.get((m, f)):
            return "collapsed (seed " + ", ".join(map(str, failed[(m, f)])) + ")"
        if not vals:
            return "–"
        if len(vals) == 1:
            return f"{vals[0]:.1f}"
        return f"{np.mean(vals):.1f} ± {np.std(vals, ddof=1):.1f}"

    lines = _fraction_grid("method", fractions, _method_order(records, methods), cell)
    lines.append("")
    lines.append(f"Test accuracy (%), mean ± std over {len(seeds)} seed(s) {seeds}.")
    partial = {
        m: sorted({r.get("seed", 0) for r in records if r["method"] == m})
        for m in _method_order(records, methods)
    }
    partial = {m: s for m, s in partial.items() if s != seeds}
    if partial:
        lines.append("Fewer seeds for " + "; ".join(f"{m}: {s}" for m, s in partial.items()) + ".")
    if failed:
        lines.append(
            "collapsed: that seed's model predicted one class for most validation images "
            "(a failed training, reported instead of its accuracy)."
        )
    return "\n".join(lines)


# Two-sided 5% critical values of Student's t by degrees of freedom (10 stands for >= 10,
# which makes the test slightly conservative there).
_T_975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
}


def paired_difference_table(
    records: Sequence[dict], reference: str, methods: Sequence[str] | None = None
) -> str:
    """`reference` minus each other method, paired by seed and labeled fraction.

    Each cell is the mean ± std over seeds of acc(reference) - acc(method) in points, marked
    (+) / (−) where a two-sided paired t-test rejects "no difference" at the 5% level (no
    mark with one seed). The last column is the same for the mean over the fractions (the
    area under the learning curve). Empty string when `reference` has no records.
    """
    # Collapsed models are failures, not numbers: their pairs are left out.
    acc = {
        (r["method"], r.get("seed", 0), round(r["fraction"], 4)): 100.0 * r["accuracy"]
        for r in records
        if not r.get("collapsed")
    }
    fractions = sorted({f for _, _, f in acc})
    order = [m for m in _method_order(records, methods) if m != reference]
    if reference not in {m for m, _, _ in acc} or not order:
        return ""

    def cell(diffs):
        if not diffs:
            return "–"
        mean = float(np.mean(diffs))
        if len(diffs) == 1:
            return f"{mean:+.1f}"
        std = float(np.std(diffs, ddof=1))
        bound = _T_975[min(len(diffs) - 1, 10)] * std / math.sqrt(len(diffs))
        mark = " (+)" if mean > bound else " (−)" if mean < -bound else ""
        return f"{mean:+.1f} ± {std:.1f}{mark}"

    head = (
        f"| {reference} minus | "
        + " | ".join(f"{100 * f:.1f}%" for f in fractions)
        + " | mean over the curve |"
    )
    lines = [head, "|---|" + "---|" * (len(fractions) + 1)]
    for m in order:
        seeds = sorted(
            {s for mm, s, _ in acc if mm == m} & {s for mm, s, _ in acc if mm == reference}
        )
        row = []
        for f in fractions:
            row.append(
                cell(
                    [
                        acc[(reference, s, f)] - acc[(m, s, f)]
                        for s in seeds
                        if (reference, s, f) in acc and (m, s, f) in acc
                    ]
                )
            )
        curve = [
            np.mean([acc[(reference, s, f)] - acc[(m, s, f)] for f in fractions])
            for s in seeds
            if all((reference, s, f) in acc and (m, s, f) in acc for f in fractions)
        ]
        row.append(cell(curve))
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    lines.append("")
    lines.append(
        f"Accuracy of {reference} minus the method's, in points, paired by seed: mean ± std "
        "over seeds; (+) / (−): a paired t-test at the 5% level says the difference is not 0."
    )
    return "\n".join(lines)


def curve_means_table(records: Sequence[dict], methods: Sequence[str] | None = None) -> str:
    """Mean over the curve (each fraction's mean over seeds, averaged over the fractions) of
    test accuracy and, where every record has it, of validation accuracy: the column a choice
    between methods may be made on. Empty when no record has a validation accuracy."""
    if not any("val_accuracy" in r for r in records):
        return ""
    lines = [
        "| method | test, mean over the curve | validation, mean over the curve |",
        "|---|---|---|",
    ]
    for m in _method_order(records, methods):
        rs = [r for r in records if r["method"] == m]
        cells = []
        for key in ("accuracy", "val_accuracy"):
            if any(r.get(key) is None for r in rs):
                cells.append("–")  # a record without it: no mean that could mislead
                continue
            by_fraction: dict[float, list[float]] = defaultdict(list)
            for r in rs:
                by_fraction[round(r["fraction"], 4)].append(100.0 * r[key])
            cells.append(f"{np.mean([np.mean(v) for v in by_fraction.values()]):.2f}")
        lines.append(f"| {m} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def field_table(
    records: Sequence[dict], key: str, caption: str, methods: Sequence[str] | None = None
) -> str:
    """Mean ± std over seeds of a record field (e.g. `train_loss`, `val_accuracy`) per method
    and labeled fraction, then `caption`. Empty when any record lacks the field."""
    if not records or any(r.get(key) is None for r in records):
        return ""
    cells: dict[tuple[str, float], list[float]] = defaultdict(list)
    fractions = sorted({round(r["fraction"], 4) for r in records})
    for r in records:
        cells[(r["method"], round(r["fraction"], 4))].append(float(r[key]))

    def cell(m, f):
        v = cells.get((m, f), [])
        return "–" if not v else f"{np.mean(v):.3g} ± {np.std(v, ddof=min(1, len(v) - 1)):.2g}"

    lines = _fraction_grid("method", fractions, _method_order(records, methods), cell)
    return "\n".join([*lines, "", caption])


def class_balance_table(records: Sequence[dict], methods: Sequence[str] | None = None) -> str:
    """How evenly each method's labeled set covers the classes, per labeled fraction.

    Each cell is the normalised entropy of the labeled set's class counts (the cumulative
    `selected_class_counts`; 1.0 = perfectly balanced, 0 = one class), mean over seeds, and
    the number of images of its rarest class. Empty string when records carry no counts.
    """
    cum: dict[tuple[str, int], np.ndarray] = {}
    cells: dict[tuple[str, float], list[tuple[float, int]]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r["method"], r.get("seed", 0), r["cycle"])):
        if "selected_class_counts" not in r:
            return ""
        key = (r["method"], r.get("seed", 0))
        counts = np.asarray(r["selected_class_counts"], np.float64)
        cum[key] = counts + (cum[key] if r["cycle"] > 0 and key in cum else 0.0)
        p = cum[key] / cum[key].sum()
        nz = p[p > 0]
        entropy = float(-(nz * np.log(nz)).sum() / np.log(len(p))) if len(p) > 1 else 1.0
        cells[(r["method"], round(r["fraction"], 4))].append((entropy, int(cum[key].min())))
    fractions = sorted({f for _, f in cells})

    def cell(m, f):
        vals = cells.get((m, f))
        if not vals:
            return "–"
        return f"{np.mean([e for e, _ in vals]):.3f} (min {min(c for _, c in vals)})"

    lines = _fraction_grid("class balance", fractions, _method_order(records, methods), cell)
    lines += [
        "",
        "Normalised entropy of the labeled set's class counts (1 = balanced), mean over seeds; "
        "in brackets the fewest images of one class in any seed's labeled set.",
    ]
    return "\n".join(lines)


def plot_curves(records: Sequence[dict], path: str, *, title: str = "") -> None:
    """Accuracy vs labeled % per method, mean line with a ±1 std band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for m in _method_order(records, None):
        by_f: dict[float, list[float]] = defaultdict(list)
        for r in records:
            if r["method"] == m:
                by_f[round(100 * r["fraction"], 3)].append(100 * r["accuracy"])
        xs = sorted(by_f)
        mean = np.array([np.mean(by_f[x]) for x in xs])
        std = np.array([np.std(by_f[x]) for x in xs])
        ax.plot(xs, mean, marker="o", label=m, lw=2.2 if m == "bal" else 1.4)
        ax.fill_between(xs, mean - std, mean + std, alpha=0.15)
    ax.set_xlabel("labeled images (% of pool)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_selection_histograms(
    records: Sequence[dict], class_names: Sequence[str], path: str, *, seed: int | None = None
) -> None:
    """Class histogram of each cycle's selection per method (the paper's Fig. 8)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if seed is None:
        seed = min(r.get("seed", 0) for r in records)
    methods = _method_order(records, None)
    fig, axes = plt.subplots(
        len(methods),
        1,
        figsize=(max(6.0, 0.45 * len(class_names) + 2), 2.2 * len(methods)),
        squeeze=False,
    )
    x = np.arange(len(class_names))
    for ax, m in zip(axes[:, 0], methods, strict=True):
        rs = sorted(
            (r for r in records if r["method"] == m and r.get("seed", 0) == seed),
            key=lambda r: r["cycle"],
        )
        width = 0.8 / max(len(rs), 1)
        for i, r in enumerate(rs):
            counts = np.asarray(r["selected_class_counts"])
            ax.bar(x + i * width, counts, width, label=f"cycle {r['cycle'] + 1}")
        ax.set_title(f"{m} (seed {seed})", fontsize=9)
        ax.set_xticks(x + 0.4 - width / 2)
        ax.set_xticklabels(class_names, fontsize=7, rotation=45 if len(class_names) > 10 else 0)
        ax.set_ylabel("selected")
    axes[0, 0].legend(fontsize=7, ncol=min(len(rs), 5))
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _save(fig, path: str) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
