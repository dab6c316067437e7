"""`run_experiment(config, workdir)`: data, pretext, clustering, beta, every method, reports.

The workdir holds everything needed to resume:

    config.json                       what the numbers depend on (a different one is refused)
    seed<S>/beta.json                 beta search scores (one line per finished candidate)
    seed<S>/<method>/                 orbax checkpoints, one per finished cycle
    seed<S>/models/<digest>/          trained main models shared by methods and beta candidates
                                      that train on the same labeled sets (train once); with
                                      `model_dir`, <model_dir>/<digest>/ instead, shared by runs
    results.jsonl, summary.md, curves.png, selections.png
    meta.json                         per seed: phase seconds, beta, beta search; wall time

Pretext features are shared by every run with the same data and pretext settings (budgets,
method lists, ablations of the selection step), in `pretext_dir` (default: `pretext/` beside
the workdir):

    <pretext_dir>/<hash of the pretext settings>/settings.json
    <pretext_dir>/<hash of the pretext settings>/seed<S>.npz     features, losses, timings

Trained main-task models can be shared by runs too (`model_dir`): a model's digest hashes
everything its weights depend on (seed's initial weights and training keys, recipe, every
labeled set of its warm-start chain and their images and labels), so two runs that differ
only in their pretext or their methods train the shared random set and the baselines once.

Several processes (`jax.distributed`): every process runs the same code on the same data and
keys and makes the same selections; only process 0 writes these files (the orbax checkpoints
are written by all, orbax's way). The workdir and the caches must be on a file system that
every process sees.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable

import jax
import numpy as np
from absl import logging

from bal_jax import heads, patch_features
from bal_jax.active_loop import ModelSpec, run_cycles, search_beta
from bal_jax.atomic import atomic_path
from bal_jax.checkpoint import ModelStore, RunCheckpointer
from bal_jax.data.pools import ActiveSplits
from bal_jax.diagnostics import knn_accuracy
from bal_jax.features import PRETEXT_CODE_VERSION, SIMCLR_LR, pretext_outputs
from bal_jax.keys import named_key
from bal_jax.learners import HeadFeatures
from bal_jax.methods import (
    NEEDS_BETA,
    NEEDS_PRETEXT,
    SWITCH_SELECTORS,
    SelectionContext,
    bal_order,
    needs_beta,
)
from bal_jax.parallel import barrier, check_same_across_processes, is_primary, make_mesh
from bal_jax.train import recipe_name
from experiments import report
from experiments.config import Config, ConfigError, flag_value, load_data, pretext_settings
from experiments.plan import Plan, check_config, make_plan, searches_beta

__all__ = ["ConfigError", "check_config", "make_plan", "run_experiment"]


def check_writable(folder: str, what: str) -> None:
    """Creates `folder` and writes a probe file in it; ConfigError with one sentence if not.

    Every process probes (orbax checkpoints are written by all), each with its own file.
    """
    probe = os.path.join(folder, f".write-probe-{jax.process_index()}")
    try:
        os.makedirs(folder, exist_ok=True)
        with atomic_path(probe) as tmp, open(tmp, "w") as f:
            f.write("ok\n")
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"cannot write to the {what} {folder}: {e.strerror or e}") from None


def _bind_workdir(workdir: str, c: Config, ndev: int = 1) -> None:
    check_writable(workdir, "workdir")
    path = os.path.join(workdir, "config.json")
    fp = c.fingerprint()
    if ndev > 1:
        # Data parallel training sums in another order: other models, so a run never
        # continues on another device count (1 device: left out, as before it was recorded).
        fp["devices"] = ndev
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != fp:
            diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
            hint = (
                f" (it was made with {old.get('devices', 1)} device(s): --cpu_devices="
                f"{old.get('devices', 1)} on a CPU)"
                if "devices" in diff
                else ""
            )
            raise ConfigError(
                f"workdir {workdir} belongs to a different configuration (differs in: "
                f"{', '.join(diff)}){hint}; use another --workdir or the same settings"
            )
    elif is_primary():
        report.atomic_write(path, json.dumps(fp, indent=2, sort_keys=True) + "\n")
    barrier("workdir bound")
    # Every process must see process 0's files, or their resumes would differ.
    with open(path) as f:
        check_same_across_processes(
            f.read(),
            what=f"view of {path}",
            fix="put the workdir on a file system that every process sees",
        )


def _images_digest(d: ActiveSplits) -> str:
    """Which images, in which order, a cache of features belongs to (the cache folder is
    keyed by settings; a dataset read from another source can hold the same images in
    another order)."""
    h = hashlib.sha256("\n".join(map(str, d.pool_ids)).encode())
    for split in (d.val, d.test):
        h.update(np.ascontiguousarray(split.images).tobytes())
    return h.hexdigest()[:16]


def _cached(path: str, d: ActiveSplits, log) -> dict | None:
    """The cached arrays at `path`, or None when absent or made for other images (caches
    written before the digest was recorded are trusted)."""
    if not os.path.exists(path):
        return None
    z = np.load(path)
    if "images" in z.files and str(z["images"]) != _images_digest(d):
        log(f"{path} was computed on other images (or another order): computing it again")
        return None
    return z


def _save_npz(path: str, **arrays) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def _progress(log, stage: str, total: int) -> Callable:
    def show(epoch, metrics=None):
        done = int(epoch) + 1 if int(epoch) < total else total
        bar = "#" * int(20 * done / total) + "." * (20 - int(20 * done / total))
        loss = ""
        if isinstance(metrics, dict) and metrics.get("loss") is not None:
            loss = f" loss {float(np.asarray(metrics['loss']).reshape(-1)[-1]):.4f}"
        log(f"{stage} [{bar}] epoch {done}/{total}{loss}")

    return show


# Fingerprint keys (Config fields; training settings under their flag names) the pretext
# features depend on (with the seed).
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
    "pretext_feature",
    "augment",
    "pretext",
    "feature_layer",
    "simclr_lr",
    "dtype",
)
# Pretext settings left out of the cache key while they have their default, so that caches
# written before they existed (rotation, final features) stay valid.
PRETEXT_DEFAULTS = {"pretext": "rotation", "feature_layer": "final", "simclr_lr": SIMCLR_LR}
# Documented variants of BAL (the paper's is `bal`): each has its own beta search and paired
# differences in the summary.
VARIANTS = ("bal_typical", "bal_switch", "bal_herding", "bal_cover")
# Neighbours of the validation-split kNN accuracy of the pretext features (issue 11).
KNN_K = 20


def default_pretext_dir(workdir: str) -> str:
    """`pretext/` beside the workdir, so sibling workdirs (budgets, ablations) share it."""
    return os.path.join(os.path.dirname(os.path.abspath(workdir)), "pretext")


def pretext_cache_dir(c: Config, pretext_dir: str) -> str:
    """The folder holding this configuration's pretext features, one file per seed."""
    fp = c.fingerprint()
    settings = {
        k: fp[k]
        for k in PRETEXT_FIELDS
        if k in fp and (k not in PRETEXT_DEFAULTS or fp[k] != PRETEXT_DEFAULTS[k])
    }
    if c.pretext == "rotation":
        settings.pop("simclr_lr", None)
    # Features of older pretext code are never reused (bump PRETEXT_CODE_VERSION on changes).
    settings["pretext_code_version"] = PRETEXT_CODE_VERSION
    blob = json.dumps(settings, sort_keys=True)
    path = os.path.join(pretext_dir, hashlib.sha256(blob.encode()).hexdigest()[:12])
    meta = os.path.join(path, "settings.json")
    if is_primary() and not os.path.exists(meta):
        report.atomic_write(meta, json.dumps(settings, indent=2, sort_keys=True) + "\n")
    return path


def _seed_context(
    c: Config, d: ActiveSplits, plan: Plan, key, seed: int, pretext_dir: str, mesh, log
) -> tuple[SelectionContext, dict]:
    """Pretext training and features (cached), K-means/CDD order for one seed."""
    model = ModelSpec(len(d.class_names), d.pool.images.shape[-1], c.width)
    # The paper trains a pretext network per seed; `pretext_seed` shares one across seeds.
    pretext_seed = seed if c.pretext_seed is None else c.pretext_seed
    pretext_key = jax.random.key(pretext_seed)
    path = os.path.join(pretext_cache_dir(c, pretext_dir), f"seed{pretext_seed}.npz")
    val_feats = None
    z = _cached(path, d, log)
    if z is not None:
        feats, losses = z["features"], z["losses"]
        val_feats = z["val_features"] if "val_features" in z.files else None
        info = json.loads(str(z["info"]))
        log(f"pretext features loaded from {path}")
    else:
        outs = pretext_outputs(
            named_key(pretext_key, "pretext"),
            d.pool.images,
            model=model,
            settings=pretext_settings(c),
            mean=d.mean,
            std=d.std,
            mesh=mesh,
            progress=_progress(log, f"pretext ({c.pretext})", c.pretext_train.epochs),
            feature_view=c.pretext_feature,
            pretext=c.pretext,
            feature_layer=c.feature_layer,
            probe_images=d.val.images,
        )
        feats, losses, val_feats = outs.features_ND, outs.losses_N, outs.probe_features_MD
        info = {f"{k}_s": round(v, 2) for k, v in outs.seconds.items()}
        extra = {} if val_feats is None else {"val_features": val_feats}
        if outs.transform is not None:  # kept for the linear head (_head_features)
            arrays = patch_features.transform_arrays(outs.transform)
            extra |= {f"{_TRANSFORM}{k}": v for k, v in arrays.items()}
        if is_primary():
            _save_npz(
                path,
                features=feats,
                losses=losses,
                info=json.dumps(info),
                images=_images_digest(d),
                **extra,
            )
        barrier("pretext features saved")
        log(f"pretext training {info['pretext_s']:.1f}s, features {info['features_s']:.1f}s")
    if val_feats is not None and d.val.labels.size > 1:
        # Feature quality, measured on the labeled validation split only (issue 11).
        k = min(KNN_K, d.val.labels.size - 1)
        info["val_knn"] = round(knn_accuracy(val_feats, np.asarray(d.val.labels), k=k), 4)
        log(
            f"pretext features ({c.pretext}, {c.feature_layer}): leave-one-out {k}-NN accuracy "
            f"{100 * info['val_knn']:.1f}% on the {d.val.labels.size} validation images"
        )
    elif val_feats is None:
        log("no validation features in this pretext cache (written before issue 11): no kNN")
    t0 = time.perf_counter()
    order = bal_order(
        named_key(key, "kmeans"),
        feats,
        num_clusters=plan.num_clusters,
        indicator=c.indicator,
        descending=c.cdd_order == "descending",
        pretext_losses_N=losses,
        n_init=c.kmeans_n_init,
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
        bal_options=plan.bal_options(c),
        pt4al_normalize_logits=c.pt4al_normalize_logits,
        switch_fraction=c.switch_fraction,
        probcover_clusters=plan.num_clusters,  # ProbCover's purity pseudo-labels (K-means K)
    )
    return context, info


# Prefix of the patch transform's arrays in a `--pretext=patches` pretext cache file.
_TRANSFORM = "transform_"


def _stored_transform(cache_dir: str, pretext_seed: int, d: ActiveSplits):
    """The patch transform `_seed_context` fitted and cached for this pretext seed, or None."""
    z = _cached(os.path.join(cache_dir, f"seed{pretext_seed}.npz"), d, lambda _: None)
    if z is None or not any(k.startswith(_TRANSFORM) for k in z.files):
        return None
    n = len(_TRANSFORM)
    return patch_features.transform_from_arrays(
        {k[n:]: z[k] for k in z.files if k[:n] == _TRANSFORM}
    )


def _head_features(c: Config, d: ActiveSplits, seed: int, pretext_dir: str, log) -> HeadFeatures:
    """`--classifier=linear`'s features (cached beside the pretext features): the patch
    transform of the seed's pretext (the same key, so the same transform) on the pool,
    validation and test images; with `--augment=crop_flip` of each image and its mirror
    (`patch_features.head_views`), else upright only (a mirrored digit is another glyph)."""
    pretext_seed = seed if c.pretext_seed is None else c.pretext_seed
    flip = c.train.augment == "crop_flip"
    name = f"seed{pretext_seed}_head{'_flip' if flip else ''}.npz"
    path = os.path.join(pretext_cache_dir(c, pretext_dir), name)
    z = _cached(path, d, log)
    if z is not None:
        return HeadFeatures(z["pool"], z["test"], z["val"])
    t0 = time.perf_counter()
    t = _stored_transform(pretext_cache_dir(c, pretext_dir), pretext_seed, d)
    if t is None:  # a pretext cache written before the transform was kept in it
        key = named_key(named_key(jax.random.key(pretext_seed), "pretext"), "patches")
        t = patch_features.fit_patch_features(key, d.pool.images)

    def views(images):
        if flip:
            return patch_features.head_views(t, images)
        return patch_features.patch_features(t, images, whiten=False)

    out = HeadFeatures(views(d.pool.images), views(d.test.images), views(d.val.images))
    if is_primary():
        _save_npz(
            path, pool=out.pool, test=out.evaluation, val=out.validation, images=_images_digest(d)
        )
    barrier("head features saved")
    log(f"linear head features {time.perf_counter() - t0:.1f}s ({out.pool.shape[-1]} dimensions)")
    return out


def _search_beta(
    c, d, plan, key, context, seed_dir, store, mesh, log, method="bal", head_features=None
) -> tuple[float, dict]:
    path = os.path.join(seed_dir, "beta.json" if method == "bal" else f"beta_{method}.json")
    state = {"scores": {}}
    if os.path.exists(path):
        with open(path) as f:
            state = json.load(f)
    done = {float(b): s for b, s in state["scores"].items()}

    def on_score(beta, score):
        done[beta] = score
        state["scores"] = {str(b): s for b, s in sorted(done.items())}
        if is_primary():
            report.atomic_write(path, json.dumps(state, indent=2) + "\n")

    result = search_beta(
        # The seed's own key: the candidate that wins is exactly the BAL run's first cycles,
        # so the run restores those models from the store instead of training them again.
        key,
        candidates=plan.beta_grid,
        search_cycles=plan.search_cycles,
        pool=d.pool,
        validation=d.val,
        counts=plan.counts,
        context=context,
        model=ModelSpec(len(d.class_names), d.pool.images.shape[-1], c.width),
        settings=c.train,
        mean=d.mean,
        std=d.std,
        warm_start=c.use_warm_start,
        model_store=store,
        done=done,
        on_score=on_score,
        mesh=mesh,
        log=log,
        method=method,
        head_features=head_features,
    )
    state.update(beta=result.beta, seconds=round(result.seconds + state.get("seconds", 0.0), 2))
    if is_primary():
        report.atomic_write(path, json.dumps(state, indent=2) + "\n")
    # The total over every invocation: a resumed search must not report its 0 s alone.
    log(
        f"beta = {result.beta:g} (validation scores {result.scores}, search "
        f"{state['seconds']:.1f}s in all, {plan.search_cycles} cycles per candidate)"
    )
    return result.beta, state


def budget_line(c: Config, plan: Plan, pool_size: int) -> str:
    """One sentence saying what the budget fractions are fractions of (docs/fidelity.md)."""
    whole = "the pool" if c.fractions_of == "pool" else "pool + validation"
    return (
        f"Budget fractions are of {whole} ({plan.fraction_base} images; --fractions_of="
        f"{c.fractions_of}): {plan.counts[0]} images in the first cycle, "
        f"{sum(plan.counts)} of the {pool_size}-image pool in all."
    )


def run_experiment(
    config: Config,
    workdir: str,
    *,
    pretext_dir: str | None = None,
    model_dir: str | None = None,
    log: Callable[[str], None] = logging.info,
) -> list[dict]:
    """Runs every (seed, method) of `config` in `workdir`, resuming what is there.

    Pretext features are read from / written to `pretext_dir` (default: `pretext/` beside
    the workdir), keyed by the pretext settings, so budgets and ablations share them.
    Trained main-task models are kept in `seed<S>/models/` of the workdir, or in `model_dir`
    when given (keyed by their lineage digest, so runs that train the same model share it).

    Returns:
      All per-cycle records (also written to results.jsonl), after writing summary.md,
      curves.png and selections.png.
    """
    c = config
    # Processes started with different flags would part ways at the first file they read.
    check_same_across_processes(
        json.dumps([dataclasses.asdict(c), workdir, pretext_dir, model_dir], sort_keys=True),
        what="configuration",
    )
    check_config(c)
    mesh = make_mesh()
    ndev = mesh.devices.size
    nproc = jax.process_count()
    devices = f"{ndev} devices" + (f" of the {nproc} processes" if nproc > 1 else "")
    for name in ("batch_size", "pretext_batch_size", "eval_batch_size"):
        if flag_value(c, name) % ndev:
            raise ConfigError(
                f"--{name}={flag_value(c, name)} must be a multiple of the {devices} "
                "(the batch is split evenly over them)"
            )
    t_start = time.perf_counter()
    d = load_data(c)
    pool_size = d.pool.images.shape[0]
    plan = make_plan(
        c, pool_size=pool_size, val_size=d.val.images.shape[0], num_classes=len(d.class_names)
    )
    counts = plan.counts
    _bind_workdir(workdir, c, ndev)
    if pretext_dir is None:
        pretext_dir = default_pretext_dir(workdir)
    if any(m in ("bal", "pt4al", "typiclust") for m in c.methods):
        check_writable(pretext_dir, "pretext cache")
    if model_dir is not None:
        check_writable(model_dir, "model store")
    log(
        f"{d.name}: pool {pool_size}, validation {d.val.images.shape[0]}, test "
        f"{d.test.images.shape[0]}, {len(d.class_names)} classes; budget {c.budget_name} "
        f"{[round(f, 4) for f in c.schedule]} = {list(counts)} images per cycle"
    )
    log(budget_line(c, plan, pool_size))
    model = ModelSpec(len(d.class_names), d.pool.images.shape[-1], c.width)
    settings = c.train
    all_records: list[dict] = []
    meta: dict = {"seeds": {}}

    def publish():
        if is_primary():
            report.write_jsonl(os.path.join(workdir, "results.jsonl"), all_records)

    for seed in c.seeds:
        key = jax.random.key(seed)
        seed_dir = os.path.join(workdir, f"seed{seed}")
        store = ModelStore(model_dir or os.path.join(seed_dir, "models"))
        needs_pretext = any(m in NEEDS_PRETEXT for m in c.methods)
        context, info = (
            _seed_context(c, d, plan, key, seed, pretext_dir, mesh, log)
            if needs_pretext
            else (SelectionContext(), {})
        )
        head = _head_features(c, d, seed, pretext_dir, log) if c.classifier == "linear" else None
        beta_state = None
        if "bal" in c.methods and searches_beta(c):
            beta, beta_state = _search_beta(
                c, d, plan, key, context, seed_dir, store, mesh, log, head_features=head
            )
            context = context._replace(beta=beta)
        # Each variant gets its own Eq. 9 search (its picks differ from BAL's).
        variant_beta = {}
        for variant in VARIANTS:
            if variant not in c.methods or not searches_beta(c):
                continue
            if not needs_beta(
                variant,
                plan.counts,
                pool_size=d.pool.images.shape[0],
                switch_fraction=c.switch_fraction,
            ):  # bal_switch / bal_herding below the switch throughout
                log(
                    f"{variant}: every cycle starts below --switch_fraction="
                    f"{c.switch_fraction:g} of the pool, so it picks with "
                    f"{SWITCH_SELECTORS[variant]} throughout and needs no beta"
                )
                variant_beta[variant] = None
                continue
            variant_beta[variant], variant_state = _search_beta(
                c, d, plan, key, context, seed_dir, store, mesh, log, variant, head
            )
            info[f"{variant}_beta"] = variant_beta[variant]
            info[f"{variant}_beta_search_s"] = variant_state.get("seconds")
        meta["seeds"][seed] = {"phases": info, "beta": context.beta, "beta_search": beta_state}
        base_context = context
        for method in c.methods:
            beta = variant_beta[method] if method in variant_beta else base_context.beta
            context = base_context._replace(beta=beta)
            ckpt = RunCheckpointer(os.path.join(seed_dir, method))
            extra = {"seed": seed, "dataset": d.name, "budget": c.budget_name}
            if method in NEEDS_BETA:
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
                head_features=head,
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
        store.close()  # before jax.distributed ends: a live orbax thread then aborts the process
    meta["wall_s"] = round(time.perf_counter() - t_start, 1)
    if is_primary():
        report.atomic_write(os.path.join(workdir, "meta.json"), json.dumps(meta, indent=2) + "\n")
        write_reports(c, d, plan, all_records, meta, workdir)
    return all_records


def _model_line(c: Config) -> str:
    if c.classifier == "linear":
        return (
            f"Preset `{c.preset}`; classifier `linear` (bal_jax.learners.LinearLearner): "
            "logistic regression on the standardised patch features"
            + (" of each image and its mirror" if c.train.augment == "crop_flip" else "")
            + ", refitted every cycle, its L2 chosen by 3-fold cross-validation on the "
            f"labeled set only (grid {', '.join(f'{g:g}' for g in heads.L2_GRID)})."
        )
    return (
        f"Preset `{c.preset}`; VGG16 width {c.width}; pretext {c.pretext_train.epochs} epochs, "
        f"main {c.train.epochs} epochs per cycle "
        f"({'warm start' if c.use_warm_start else 'from scratch'}), "
        f"recipe `{recipe_name(c.train.recipe) or 'custom'}` {_recipe_text(c)}."
    )


def _recipe_text(c: Config) -> str:
    s = c.train
    r = s.recipe
    if r.schedule == "multistep":
        text = f"(lr {s.learning_rate} x0.1 at epochs {list(s.milestones)}"
    else:
        text = f"(lr {s.learning_rate}, {100 * r.warmup_fraction:g}% warm-up then cosine to 0"
    if r.min_steps:
        text += f", at least {r.min_steps} steps"
    extras = [
        f"label smoothing {r.label_smoothing:g}" if r.label_smoothing else "",
        f"weight EMA {r.ema_decay:g}" if r.ema_decay else "",
        "flip TTA" if r.tta_flip else "",
        "Nesterov" if r.nesterov else "",
    ]
    return text + "".join(f", {e}" for e in extras if e) + f", batch {s.batch_size})"


def _beta_line(c: Config, plan: Plan, pool_size: int) -> str:
    """The summary's sentence on beta: searched, given by --beta, or not needed (and why)."""
    below_switch = [
        m
        for m in c.methods
        if m in SWITCH_SELECTORS
        and not needs_beta(m, plan.counts, pool_size=pool_size, switch_fraction=c.switch_fraction)
    ]
    if searches_beta(c) and set(c.methods) & NEEDS_BETA - set(below_switch):
        return (
            f"Beta search: {plan.search_cycles} cycles per candidate "
            f"({100 * c.schedule[plan.search_cycles - 1]:g}% labeled; paper Eq. 9: about "
            f"{100 * c.beta_search_fraction:g}%), scored on validation."
        )
    if c.beta is not None:
        return f"Beta: {c.beta:g} (--beta), no search."
    if below_switch:
        return (
            f"No beta searched: every cycle starts below --switch_fraction="
            f"{c.switch_fraction:g} of the pool, where {', '.join(below_switch)} need none."
        )
    return "No beta: no method draws from BAL's adaptive sub-pools."


def write_reports(
    c: Config, d: ActiveSplits, plan: Plan, records: list[dict], meta: dict, workdir: str
) -> None:
    table = report.accuracy_table(records, c.methods)
    paired = report.paired_difference_table(records, "bal", c.methods)
    variant_paired = [report.paired_difference_table(records, v, c.methods) for v in VARIANTS]
    balance = report.class_balance_table(records, c.methods)
    lines = [
        f"# BAL on {d.name}, {c.budget_name} budget",
        "",
        table,
        "",
        *([paired, ""] if paired else []),
        *(line for t in variant_paired if t for line in (t, "")),
        *([balance, ""] if balance else []),
        f"Pool {d.pool.images.shape[0]} images, validation {d.val.images.shape[0]} "
        f"(beta search only), test {d.test.images.shape[0]} (reported only). "
        "Reported model: last epoch of each cycle.",
        _model_line(c),
        budget_line(c, plan, d.pool.images.shape[0]),
        f"Augmentation: {c.train.augment}. {_beta_line(c, plan, d.pool.images.shape[0])}",
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
    quality = {
        s: m["phases"]["val_knn"]
        for s, m in meta["seeds"].items()
        if m.get("phases") and "val_knn" in m["phases"]
    }
    if quality:
        lines += [
            "",
            f"Pretext features: `{c.pretext}`, layer `{c.feature_layer}`; leave-one-out "
            f"{KNN_K}-NN accuracy on the validation split (feature quality, no pool labels): "
            + ", ".join(f"seed {s} {100 * v:.1f}%" for s, v in quality.items())
            + ".",
        ]
    for v in VARIANTS:
        betas = {
            s: m["phases"][f"{v}_beta"]
            for s, m in meta["seeds"].items()
            if f"{v}_beta" in (m.get("phases") or {})
        }
        if betas:
            lines.append(
                f"{v}'s own beta (Eq. 9 search): "
                + ", ".join(f"seed {s} {b:g}" for s, b in betas.items())
                + "."
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
