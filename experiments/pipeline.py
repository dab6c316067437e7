"""`run_experiment(config, workdir)`: data, pretext, clustering, beta, every method, reports.

The workdir holds everything needed to resume:

    config.json                       what the numbers depend on (a different one is refused)
    seed<S>/beta.json                 beta search scores (one line per finished candidate)
    seed<S>/<method>/                 orbax checkpoints, one per finished cycle
    seed<S>/models/<digest>/          trained main models shared by methods and beta candidates
                                      that train on the same labeled sets (train once)
    results.jsonl, summary.md, curves.png, selections.png
    meta.json                         per seed: phase seconds, beta, beta search; wall time

Pretext features are shared by every run with the same data and pretext settings (budgets,
method lists, ablations of the selection step), in `pretext_dir` (default: `pretext/` beside
the workdir):

    <pretext_dir>/<hash of the pretext settings>/settings.json
    <pretext_dir>/<hash of the pretext settings>/seed<S>.npz     features, losses, timings
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable

import jax
import numpy as np
from absl import logging

from bal_jax import data as data_lib
from bal_jax.active_loop import (
    ModelSpec,
    Split,
    TrainSettings,
    named_key,
    pretext_outputs,
    run_cycles,
    search_beta,
)
from bal_jax.budgets import BUDGETS, cycle_counts, validate_fractions
from bal_jax.checkpoint import ModelStore, RunCheckpointer
from bal_jax.methods import (
    BAL_SAMPLERS,
    INDICATORS,
    METHODS,
    BALOptions,
    SelectionContext,
    bal_min_beta,
    bal_order,
)
from bal_jax.parallel import make_mesh
from bal_jax.precision import DTYPES
from bal_jax.train import RECIPES
from experiments import report
from experiments.config import Config


class ConfigError(ValueError):
    """A bad flag or preset value, reported before any training."""


def check_config(c: Config) -> None:
    """Every check that needs no data; raises ConfigError with one sentence."""

    def need(ok: bool, msg: str):
        if not ok:
            raise ConfigError(msg)

    need(len(c.methods) > 0, "--method needs at least one method")
    for m in c.methods:
        need(m in METHODS, f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    need(len(set(c.methods)) == len(c.methods), f"--method lists a method twice: {c.methods}")
    need(
        len(c.seeds) > 0 and len(set(c.seeds)) == len(c.seeds),
        f"--seeds must be distinct: {c.seeds}",
    )
    need(c.budget in BUDGETS, f"unknown budget {c.budget!r}; choose one of {sorted(BUDGETS)}")
    if c.fractions:
        try:
            validate_fractions(c.fractions)
        except ValueError as e:
            raise ConfigError(f"--fractions: {e}") from None
    need(c.width > 0, f"--width must be positive, got {c.width}")
    for name in ("pretext_epochs", "epochs", "batch_size", "pretext_batch_size", "eval_batch_size"):
        need(getattr(c, name) >= 1, f"--{name} must be at least 1, got {getattr(c, name)}")
    need(c.lr > 0 and c.pretext_lr > 0, "learning rates must be positive")
    for name in ("milestones", "pretext_milestones"):
        ms = getattr(c, name)
        need(
            list(ms) == sorted(set(ms)) and all(m > 0 for m in ms),
            f"--{name}={','.join(map(str, ms))} must be strictly increasing positive epochs",
        )
    need(c.recipe in RECIPES, f"--recipe must be one of {', '.join(RECIPES)}, got {c.recipe!r}")
    need(c.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}, got {c.dtype!r}")
    need(
        c.steps_per_dispatch >= 1, f"--steps_per_dispatch must be >= 1, not {c.steps_per_dispatch}"
    )
    need(c.val_size >= 1, f"--val_size must be at least 1, got {c.val_size}")
    need(c.bal_sampler in BAL_SAMPLERS, f"--bal_sampler must be one of {BAL_SAMPLERS}")
    need(c.cdd_order in ("ascending", "descending"), "--cdd_order must be ascending or descending")
    need(c.indicator in INDICATORS, f"--indicator must be one of {INDICATORS}")
    need(c.subpools in ("adaptive", "uniform"), "--subpools must be adaptive or uniform")
    need(c.window_variant in ("paper", "released"), "--window_variant must be paper or released")
    need(c.beta is None or c.beta > 0, f"--beta must be positive, got {c.beta}")
    need(c.beta_search_cycles >= 1, "--beta_search_cycles must be at least 1")
    need(
        c.beta_search_cycles <= len(c.schedule), "--beta_search_cycles exceeds the number of cycles"
    )


@dataclasses.dataclass(frozen=True)
class Data:
    name: str
    pool: Split
    val: Split
    test: Split
    pool_ids: np.ndarray
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def load_data(c: Config) -> Data:
    try:
        ds = data_lib.load_dataset(c.dataset, data_dir=c.data_dir, image_size=c.image_size)
    except (ValueError, FileNotFoundError) as e:  # unknown name, not prepared, bad folder
        raise ConfigError(str(e)) from None
    labels = np.asarray(ds.train_labels)
    idx = np.arange(labels.shape[0])
    if c.train_subset is not None:
        if c.train_subset > labels.shape[0]:
            raise ConfigError(
                f"--train_subset={c.train_subset} exceeds the {labels.shape[0]} training images"
            )
        idx = np.asarray(
            data_lib.class_balanced_subset(labels, size=c.train_subset, seed=c.data_seed)
        )
    if c.val_size >= idx.size:
        raise ConfigError(
            f"--val_size={c.val_size} leaves no pool out of {idx.size} training images"
        )
    pool_rel, val_rel = data_lib.split_validation(labels[idx], size=c.val_size, seed=c.data_seed)
    pool_idx, val_idx = idx[np.asarray(pool_rel)], idx[np.asarray(val_rel)]
    test_labels = np.asarray(ds.test_labels)
    test_idx = np.arange(test_labels.shape[0])
    if c.test_subset is not None:
        if not 1 <= c.test_subset <= test_labels.shape[0]:
            raise ConfigError(f"--test_subset must be in [1, {test_labels.shape[0]}]")
        test_idx = np.asarray(
            data_lib.class_balanced_subset(test_labels, size=c.test_subset, seed=c.data_seed)
        )
    return Data(
        name=ds.name,
        pool=Split(ds.train_images[pool_idx], labels[pool_idx]),
        val=Split(ds.train_images[val_idx], labels[val_idx]),
        test=Split(ds.test_images[test_idx], test_labels[test_idx]),
        pool_ids=np.asarray(ds.train_ids)[pool_idx],
        class_names=tuple(ds.class_names),
        mean=tuple(ds.mean),
        std=tuple(ds.std),
    )


def _bind_workdir(workdir: str, c: Config) -> None:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    fp = c.fingerprint()
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != fp:
            diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
            raise ConfigError(
                f"workdir {workdir} belongs to a different configuration (differs in: "
                f"{', '.join(diff)}); use another --workdir or the same settings"
            )
    else:
        report.atomic_write(path, json.dumps(fp, indent=2, sort_keys=True) + "\n")


def _save_npz(path: str, **arrays) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".npz")
    os.close(fd)
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _progress(log, stage: str, total: int) -> Callable:
    def show(epoch, metrics=None):
        done = int(epoch) + 1 if int(epoch) < total else total
        bar = "#" * int(20 * done / total) + "." * (20 - int(20 * done / total))
        loss = ""
        if isinstance(metrics, dict) and metrics.get("loss") is not None:
            loss = f" loss {float(np.asarray(metrics['loss']).reshape(-1)[-1]):.4f}"
        log(f"{stage} [{bar}] epoch {done}/{total}{loss}")

    return show


# Config fields the pretext features depend on (with the seed).
PRETEXT_FIELDS = (
    "dataset",
    "data_dir",
    "image_size",
    "train_subset",
    "val_size",
    "data_seed",
    "width",
    "pretext_epochs",
    "pretext_batch_size",
    "pretext_lr",
    "pretext_milestones",
    "dtype",
)


def default_pretext_dir(workdir: str) -> str:
    """`pretext/` beside the workdir, so sibling workdirs (budgets, ablations) share it."""
    return os.path.join(os.path.dirname(os.path.abspath(workdir)), "pretext")


def pretext_cache_dir(c: Config, pretext_dir: str) -> str:
    """The folder holding this configuration's pretext features, one file per seed."""
    fp = c.fingerprint()
    settings = {k: fp[k] for k in PRETEXT_FIELDS if k in fp}  # dtype is absent at float32
    blob = json.dumps(settings, sort_keys=True)
    path = os.path.join(pretext_dir, hashlib.sha256(blob.encode()).hexdigest()[:12])
    os.makedirs(path, exist_ok=True)
    meta = os.path.join(path, "settings.json")
    if not os.path.exists(meta):
        report.atomic_write(meta, json.dumps(settings, indent=2, sort_keys=True) + "\n")
    return path


def _seed_context(
    c: Config, d: Data, key, seed: int, pretext_dir: str, mesh, log
) -> tuple[SelectionContext, dict]:
    """Pretext training and features (cached), K-means/CDD order for one seed."""
    model = ModelSpec(len(d.class_names), d.pool.images.shape[-1], c.width)
    path = os.path.join(pretext_cache_dir(c, pretext_dir), f"seed{seed}.npz")
    if os.path.exists(path):
        z = np.load(path)
        feats, losses = z["features"], z["losses"]
        info = json.loads(str(z["info"]))
        log(f"pretext features loaded from {path}")
    else:
        settings = TrainSettings(
            epochs=c.pretext_epochs,
            batch_size=c.pretext_batch_size,
            learning_rate=c.pretext_lr,
            milestones=c.pretext_milestones,
            eval_batch_size=c.eval_batch_size,
            dtype=c.dtype,
            steps_per_dispatch=c.steps_per_dispatch,
        )
        outs = pretext_outputs(
            named_key(key, "pretext"),
            d.pool.images,
            model=model,
            settings=settings,
            mean=d.mean,
            std=d.std,
            mesh=mesh,
            progress=_progress(log, "pretext", c.pretext_epochs),
        )
        feats, losses = outs.features_ND, outs.losses_N
        info = {f"{k}_s": round(v, 2) for k, v in outs.seconds.items()}
        _save_npz(path, features=feats, losses=losses, info=json.dumps(info))
        log(f"pretext training {info['pretext_s']:.1f}s, features {info['features_s']:.1f}s")
    t0 = time.perf_counter()
    order = bal_order(
        named_key(key, "kmeans"),
        feats,
        num_clusters=c.num_clusters or len(d.class_names),
        indicator=c.indicator,
        descending=c.cdd_order == "descending",
        pretext_losses_N=losses,
    )
    info["clustering_s"] = round(time.perf_counter() - t0, 2)
    log(
        f"K-means + {c.indicator} order {info['clustering_s']:.2f}s "
        f"({feats.shape[0]} x {feats.shape[1]} features)"
    )
    context = SelectionContext(
        bal_order=order,
        # PT4AL: pretext loss descending, sorted numerically (the released code sorted strings).
        pt4al_order=np.argsort(-losses, kind="stable"),
        pretext_features_ND=feats,
        beta=c.beta,
        bal_options=BALOptions(
            sampler=c.bal_sampler,
            uniform_subpools=c.subpools == "uniform",
            window_variant=c.window_variant,
            normalize_logits=c.normalize_logits,
        ),
    )
    return context, info


def _search_beta(c, d, key, context, counts, seed_dir, store, mesh, log) -> tuple[float, dict]:
    path = os.path.join(seed_dir, "beta.json")
    state = {"scores": {}}
    if os.path.exists(path):
        with open(path) as f:
            state = json.load(f)
    done = {float(b): s for b, s in state["scores"].items()}

    def on_score(beta, score):
        done[beta] = score
        state["scores"] = {str(b): s for b, s in sorted(done.items())}
        report.atomic_write(path, json.dumps(state, indent=2) + "\n")

    result = search_beta(
        named_key(key, "beta_search"),
        candidates=c.beta_grid,
        search_cycles=c.beta_search_cycles,
        pool=d.pool,
        validation=d.val,
        counts=counts,
        context=context,
        model=ModelSpec(len(d.class_names), d.pool.images.shape[-1], c.width),
        settings=_main_settings(c),
        mean=d.mean,
        std=d.std,
        warm_start=c.use_warm_start,
        model_store=store,
        done=done,
        on_score=on_score,
        mesh=mesh,
        log=log,
    )
    state.update(beta=result.beta, seconds=round(result.seconds + state.get("seconds", 0.0), 2))
    report.atomic_write(path, json.dumps(state, indent=2) + "\n")
    log(f"beta = {result.beta:g} (validation scores {result.scores}, {result.seconds:.1f}s)")
    return result.beta, state


def _main_settings(c: Config) -> TrainSettings:
    return TrainSettings(
        epochs=c.epochs,
        batch_size=c.batch_size,
        learning_rate=c.lr,
        milestones=c.milestones,
        eval_batch_size=c.eval_batch_size,
        recipe=RECIPES[c.recipe],
        dtype=c.dtype,
        steps_per_dispatch=c.steps_per_dispatch,
    )


def run_experiment(
    config: Config,
    workdir: str,
    *,
    pretext_dir: str | None = None,
    log: Callable[[str], None] = logging.info,
) -> list[dict]:
    """Runs every (seed, method) of `config` in `workdir`, resuming what is there.

    Pretext features are read from / written to `pretext_dir` (default: `pretext/` beside
    the workdir), keyed by the pretext settings, so budgets and ablations share them.

    Returns:
      All per-cycle records (also written to results.jsonl), after writing summary.md,
      curves.png and selections.png.
    """
    c = config
    check_config(c)
    t_start = time.perf_counter()
    d = load_data(c)
    pool_size = d.pool.images.shape[0]
    try:
        counts = cycle_counts(c.schedule, pool_size=pool_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if c.beta is not None and "bal" in c.methods and c.subpools == "adaptive":
        options = BALOptions(window_variant=c.window_variant)
        lowest = bal_min_beta(counts, pool_size=pool_size, options=options)
        if c.beta < lowest:
            raise ConfigError(f"--beta={c.beta} is below its minimum {lowest:.4g} (k*C/N) here")
    mesh = make_mesh()
    ndev = mesh.devices.size
    for name in ("batch_size", "pretext_batch_size", "eval_batch_size"):
        if getattr(c, name) % ndev:
            raise ConfigError(
                f"--{name}={getattr(c, name)} must be a multiple of the {ndev} devices "
                "(the batch is split evenly over them)"
            )
    _bind_workdir(workdir, c)
    if pretext_dir is None:
        pretext_dir = default_pretext_dir(workdir)
    log(
        f"{d.name}: pool {pool_size}, validation {d.val.images.shape[0]}, test "
        f"{d.test.images.shape[0]}, {len(d.class_names)} classes; budget {c.budget_name} "
        f"{[round(f, 4) for f in c.schedule]} = {list(counts)} images per cycle"
    )
    model = ModelSpec(len(d.class_names), d.pool.images.shape[-1], c.width)
    settings = _main_settings(c)
    all_records: list[dict] = []
    meta: dict = {"seeds": {}}

    def publish():
        report.write_jsonl(os.path.join(workdir, "results.jsonl"), all_records)

    for seed in c.seeds:
        key = jax.random.key(seed)
        seed_dir = os.path.join(workdir, f"seed{seed}")
        os.makedirs(seed_dir, exist_ok=True)
        store = ModelStore(os.path.join(seed_dir, "models"))
        needs_pretext = any(m in ("bal", "pt4al", "typiclust") for m in c.methods)
        context, info = (
            _seed_context(c, d, key, seed, pretext_dir, mesh, log)
            if needs_pretext
            else (SelectionContext(), {})
        )
        beta_state = None
        if "bal" in c.methods and c.beta is None and c.subpools == "adaptive":
            beta, beta_state = _search_beta(c, d, key, context, counts, seed_dir, store, mesh, log)
            context = context._replace(beta=beta)
        meta["seeds"][seed] = {"phases": info, "beta": context.beta, "beta_search": beta_state}
        for method in c.methods:
            ckpt = RunCheckpointer(os.path.join(seed_dir, method))
            extra = {"seed": seed, "dataset": d.name, "budget": c.budget_name}
            if method == "bal":
                extra["beta"] = context.beta

            def finish(record, extra=extra):
                sel = np.asarray(record["selected"], np.int64)
                full = dict(record, **extra)
                full["selected_ids"] = [str(i) for i in d.pool_ids[sel]]
                full["selected_class_counts"] = np.bincount(
                    d.pool.labels[sel], minlength=len(d.class_names)
                ).tolist()
                full["reported_model"] = "last epoch (no model selection)"
                del full["selected"]
                return full

            records = run_cycles(
                key,
                method=method,
                pool=d.pool,
                evaluation=d.test,
                validation=d.val,
                counts=counts,
                context=context,
                model=model,
                settings=settings,
                mean=d.mean,
                std=d.std,
                warm_start=c.use_warm_start,
                checkpointer=ckpt,
                model_store=store,
                mesh=mesh,
                log=log,
                on_cycle=lambda r, finish=finish: (all_records.append(finish(r)), publish()),
            )
            ckpt.close()
            # Cycles restored from a checkpoint were not passed to on_cycle in this process.
            have = {(r["seed"], r["method"], r["cycle"]) for r in all_records}
            for r in records:
                if (seed, method, r["cycle"]) not in have:
                    all_records.append(finish(r))
                    meta["resumed"] = True
            all_records.sort(key=lambda r: (r["seed"], c.methods.index(r["method"]), r["cycle"]))
            publish()
    meta["wall_s"] = round(time.perf_counter() - t_start, 1)
    report.atomic_write(os.path.join(workdir, "meta.json"), json.dumps(meta, indent=2) + "\n")
    write_reports(c, d, all_records, meta, workdir)
    return all_records


def _recipe_text(c: Config) -> str:
    r = RECIPES[c.recipe]
    if r.schedule == "multistep":
        text = f"(lr {c.lr} x0.1 at epochs {list(c.milestones)}"
    else:
        text = f"(lr {c.lr}, {100 * r.warmup_fraction:g}% warm-up then cosine to 0"
    if r.min_steps:
        text += f", at least {r.min_steps} steps"
    extras = [
        f"label smoothing {r.label_smoothing:g}" if r.label_smoothing else "",
        f"weight EMA {r.ema_decay:g}" if r.ema_decay else "",
        "flip TTA" if r.tta_flip else "",
        "Nesterov" if r.nesterov else "",
    ]
    return text + "".join(f", {e}" for e in extras if e) + f", batch {c.batch_size})"


def write_reports(c: Config, d: Data, records: list[dict], meta: dict, workdir: str) -> None:
    table = report.accuracy_table(records, c.methods)
    paired = report.paired_difference_table(records, "bal", c.methods)
    lines = [
        f"# BAL on {d.name}, {c.budget_name} budget",
        "",
        table,
        "",
        *([paired, ""] if paired else []),
        f"Pool {d.pool.images.shape[0]} images, validation {d.val.images.shape[0]} "
        f"(beta search only), test {d.test.images.shape[0]} (reported only). "
        "Reported model: last epoch of each cycle.",
        f"Preset `{c.preset}`; VGG16 width {c.width}; pretext {c.pretext_epochs} epochs, main "
        f"{c.epochs} epochs per cycle ({'warm start' if c.use_warm_start else 'from scratch'}), "
        f"recipe `{c.recipe}` {_recipe_text(c)}.",
        "",
        "| seed | beta | beta search: validation acc. (%) | search s | pretext s | features s "
        "| clustering s |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed, m in meta["seeds"].items():
        bs = m.get("beta_search") or {}
        scores = ", ".join(f"{float(b):g}: {100 * s:.1f}" for b, s in bs.get("scores", {}).items())
        beta = "–" if m["beta"] is None else f"{m['beta']:g}"
        ph = m.get("phases") or {}
        lines.append(
            f"| {seed} | {beta} | {scores or 'given'} | {bs.get('seconds', '–')} "
            f"| {ph.get('pretext_s', '–')} | {ph.get('features_s', '–')} "
            f"| {ph.get('clustering_s', '–')} |"
        )
    secs: dict[str, float] = {}
    for r in records:
        for k, v in r["seconds"].items():
            secs[k] = secs.get(k, 0.0) + v
    lines += [
        "",
        "Seconds per phase over all cycles: "
        + ", ".join(f"{k} {v:.1f}" for k, v in secs.items())
        + f". Wall time of this invocation: {meta['wall_s']}s"
        + (" (it resumed cycles finished by an earlier one)." if meta.get("resumed") else "."),
        "",
    ]
    report.atomic_write(os.path.join(workdir, "summary.md"), "\n".join(lines))
    title = f"{d.name}, {c.budget_name} budget"
    report.plot_curves(records, os.path.join(workdir, "curves.png"), title=title)
    report.plot_selection_histograms(
        records, d.class_names, os.path.join(workdir, "selections.png")
    )
