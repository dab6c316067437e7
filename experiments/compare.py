"""One table from several runs that share their data, budget and trainer.

    python -m experiments.compare \
        --run=runs/cifar10_cpu_small_simclr \
        --run=runs/cifar10_cpu_small:bal=bal_rotation,pt4al \
        --reference=bal_typical,bal_rotation --out=experiments/reports/cifar10_cpu_lowbudget

A run's selection sees its pretext features, so methods that need different pretexts (the
paper's BAL on rotation features, the variant on SimCLR features) run in separate workdirs.
This merges them: `--run=WORKDIR[:METHOD[=NEW_NAME],...]` takes the listed methods of a
workdir's results.jsonl (all when none are listed), renamed where asked. The runs must agree
on everything that decides how a labeled set is trained and scored (data, split, budget,
recipe, network); they may differ only in what the selection sees (pretext, features, beta,
sub-pool and sampler options), which is checked from their config.json. A method present in
several runs must have the same accuracies in each (with a shared `--model_dir` it restores
the same models), otherwise the runs are refused: pairing by seed would be wrong.

Writes to `--out`: summary.md (accuracy table, paired differences of each reference against
every other method, where every row comes from), results.jsonl (the merged records, each with
its `run`) and curves.png.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from absl import app, flags

from bal_jax.methods import NEEDS_PRETEXT
from experiments import report


def define_flags() -> None:
    """The command's flags (defined on demand: other commands own some of the names)."""
    flags.DEFINE_multi_string(
        "run", None, "WORKDIR[:METHOD[=NEW_NAME],...]; repeat for every run to merge."
    )
    flags.DEFINE_list(
        "reference", None, "Methods (merged names) whose paired differences are tabled."
    )
    flags.DEFINE_string("out", None, "Output folder.")
    flags.DEFINE_string("title", None, "Title of summary.md (default: from the runs).")
    flags.DEFINE_list(
        "vary",
        [],
        "Training settings (config fields) the runs may also differ in: an ablation of that "
        "setting (e.g. warm_start); summary.md lists each run's value.",
    )


# config.json keys (Config fields, the training settings under their flag names) that only
# change what the selection sees; compared runs may differ in them.
SELECTION_FIELDS = frozenset(
    {
        "pretext",
        "pretext_epochs",
        "pretext_batch_size",
        "pretext_lr",
        "pretext_milestones",
        "pretext_feature",
        "pretext_seed",
        "simclr_lr",
        "feature_layer",
        "beta",
        "beta_grid",
        "beta_search_cycles",
        "beta_search_fraction",
        "bal_sampler",
        "cdd_order",
        "indicator",
        "kmeans_n_init",
        "num_clusters",
        "normalize_logits",
        "pt4al_normalize_logits",
        "subpools",
        "switch_fraction",
        "window_budget",
        "window_variant",
    }
)


class CompareError(ValueError):
    """Runs that cannot be merged into one table."""


def parse_run(spec: str) -> tuple[str, dict[str, str] | None]:
    """'WORKDIR[:m1[=new1],m2,...]' -> (workdir, {method: name} or None for all)."""
    workdir, sep, rest = spec.partition(":")
    if not workdir:
        raise CompareError(f"--run={spec!r} names no workdir")
    if not sep:
        return workdir, None
    names = {}
    for item in rest.split(","):
        method, _, new = item.partition("=")
        if not method:
            raise CompareError(f"--run={spec!r} has an empty method name")
        names[method] = new or method
    return workdir, names


def load_run(workdir: str) -> tuple[dict, list[dict]]:
    """A workdir's config.json and results.jsonl; CompareError when either is missing."""
    paths = [os.path.join(workdir, n) for n in ("config.json", "results.jsonl")]
    for p in paths:
        if not os.path.exists(p):
            raise CompareError(f"{p} does not exist: is {workdir} a finished runner workdir?")
    with open(paths[0]) as f:
        config = json.load(f)
    return config, report.read_jsonl(paths[1])


def merge(
    runs: Sequence[tuple[str, dict, list[dict], dict[str, str] | None]],
    vary: Sequence[str] = (),
) -> list[dict]:
    """Merged records of `runs` = [(workdir, config, records, names or None), ...].

    `vary`: config fields the runs may differ in besides SELECTION_FIELDS (the setting an
    ablation compares; the methods then need distinct names per run).

    Raises:
      CompareError: configs that differ outside SELECTION_FIELDS and `vary`, a listed method missing
        from its run, two methods merged under one name from different runs with different
        accuracies, or no records at all.
    """
    if not runs:
        raise CompareError("give at least one --run")
    first_dir, first_cfg = runs[0][0], runs[0][1]
    for workdir, cfg, _, _ in runs[1:]:
        diff = sorted(
            k
            for k in set(cfg) | set(first_cfg)
            if k not in SELECTION_FIELDS and k not in vary and cfg.get(k) != first_cfg.get(k)
        )
        if diff:
            raise CompareError(
                f"{workdir} and {first_dir} differ in {', '.join(diff)}: their accuracies "
                "are not comparable (only pretext, feature and selection settings may differ)"
            )
    merged: dict[tuple[str, int, int], dict] = {}
    for workdir, _, records, names in runs:
        present = {r["method"] for r in records}
        missing = sorted(set(names or ()) - present)
        if missing:
            raise CompareError(
                f"{workdir} has no records of {', '.join(missing)} (it has {sorted(present)})"
            )
        for r in records:
            if names is not None and r["method"] not in names:
                continue
            name = (names or {}).get(r["method"], r["method"])
            new = dict(r, method=name, run=workdir, source_method=r["method"])
            key = (new["method"], r.get("seed", 0), r["cycle"])
            old = merged.get(key)
            if old is None:
                merged[key] = new
            elif old["accuracy"] != new["accuracy"]:
                raise CompareError(
                    f"{new['method']} seed {key[1]} cycle {key[2]}: accuracy "
                    f"{old['accuracy']:.4f} in {old['run']} but {new['accuracy']:.4f} in "
                    f"{workdir}; rename one of them (METHOD=NEW_NAME) or share a --model_dir"
                )
    if not merged:
        raise CompareError("the runs hold no records")
    return list(merged.values())


def summary(records: Sequence[dict], runs, references: Sequence[str], title: str, vary=()) -> str:
    """summary.md: accuracy table, paired tables, the origin and settings of every row."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    for ref in references:
        if ref not in methods:
            raise CompareError(f"--reference={ref} is not among the merged methods {methods}")
    lines = [f"# {title}", "", report.accuracy_table(records, methods), ""]
    means = report.curve_means_table(records, methods)
    lines += [means, ""] if means else []
    for ref in references:
        lines += [report.paired_difference_table(records, ref, methods), ""]
    if vary:  # an ablation of training: how well each arm fits its labels
        loss = report.field_table(
            records,
            "train_loss",
            "Training loss of the cycle's last epoch, mean ± std over seeds.",
            methods,
        )
        lines += [loss, ""] if loss else []
    balance = report.class_balance_table(records, methods)
    lines += [balance, ""] if balance else []
    lines += [
        "| method | run | what its selection saw |" + "".join(f" {k} |" for k in vary),
        "|---|---|---|" + "---|" * len(vary),
    ]
    first_cfg = runs[0][1]
    for m in methods:
        origin = list(dict.fromkeys(r["run"] for r in records if r["method"] == m))
        cfg = next(c for w, c, _, _ in runs if w == origin[0])
        keys = ("pretext", "pretext_epochs", "feature_layer", "pretext_seed")
        if cfg.get("pretext") == "patches":  # no network: no epochs, no layer
            keys = ("pretext", "pretext_seed")
        seen = ", ".join(f"{k}={cfg[k]}" for k in keys if k in cfg)
        source = next(r.get("source_method", m) for r in records if r["method"] == m)
        if source not in NEEDS_PRETEXT:
            seen = "the main model only (no pretext features)"
        varied = "".join(f" {cfg.get(k)} |" for k in vary)
        lines.append(f"| {m} | {', '.join(f'`{w}`' for w in origin)} | {seen} |{varied}")
    lines += [
        "",
        "Shared by every run: "
        + ", ".join(
            f"{k}={first_cfg[k]}"
            for k in ("dataset", "train_subset", "val_size", "budget", "width", "recipe")
            if k in first_cfg and k not in vary
        )
        + ".",
        "",
    ]
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}; flags are --name=value")
    fv = flags.FLAGS
    try:
        if not fv.run or not fv.out:
            raise CompareError("give --run (one or more) and --out")
        runs = []
        for spec in fv.run:
            workdir, names = parse_run(spec)
            config, records = load_run(workdir)
            runs.append((workdir, config, records, names))
        records = merge(runs, fv.vary)
        title = fv.title or "Comparison of " + ", ".join(w for w, *_ in runs)
        text = summary(records, runs, fv.reference or [], title, fv.vary)
    except CompareError as e:
        sys.exit(f"error: {e}")
    os.makedirs(fv.out, exist_ok=True)
    report.atomic_write(os.path.join(fv.out, "summary.md"), text)
    report.write_jsonl(os.path.join(fv.out, "results.jsonl"), records)
    report.plot_curves(records, os.path.join(fv.out, "curves.png"), title=title)
    print(text)


if __name__ == "__main__":
    define_flags()
    app.run(main)
