r"""BAL experiment runner.

    python -m experiments.main                               # BAL + random on digits (CPU)
    python -m experiments.main --dataset=svhn --budget=small # paper settings (GPU/TPU)
    python -m experiments.main --method=bal,random,pt4al --seeds=0,1,2 --workdir=runs/x
    python -m experiments.launch --num_processes=2 -- --workdir=runs/x   # 2 local processes

Flags given explicitly override the preset (`--config`, default: the dataset's preset).
Several processes (`--distributed`, README "Several hosts") run the same experiment on one mesh;
process 0 logs and writes the results.
"""

from __future__ import annotations

import dataclasses
import logging as std_logging
import sys
import time

import jax
from absl import app, flags, logging

from bal_jax import parallel
from experiments import config as config_lib
from experiments.pipeline import ConfigError, run_experiment

_CONFIG = flags.DEFINE_enum(
    "config", None, list(config_lib.PRESETS), "Preset (default: the dataset's preset)."
)
flags.DEFINE_string("dataset", None, "digits, cifar10, svhn, caltech101, or folder:PATH.")
flags.DEFINE_string("data_dir", None, "tfds data_dir holding prepared datasets.")
flags.DEFINE_integer("image_size", None, "Resize images to this size (multiple of 32).")
flags.DEFINE_integer("train_subset", None, "Class-balanced subset of the training split.")
flags.DEFINE_integer("val_size", None, "Validation images carved from the training split.")
flags.DEFINE_integer("test_subset", None, "Class-balanced subset of the test split (smoke runs).")
flags.DEFINE_enum("budget", None, ["small", "medium", "large"], "The paper's budget regime.")
flags.DEFINE_list("fractions", None, "Explicit cumulative labeled fractions, e.g. 0.02,0.04.")
flags.DEFINE_list("method", None, "Methods to compare, e.g. bal,random,pt4al.")
flags.DEFINE_list("seeds", None, "Seeds, e.g. 0,1,2.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: runs/<preset>_<budget>).")
_PRETEXT_DIR = flags.DEFINE_string(
    "pretext_dir",
    None,
    "Cache of pretext features shared across budgets and ablations (default: pretext/ "
    "beside the workdir); keyed by the pretext settings.",
)
_MODEL_DIR = flags.DEFINE_string(
    "model_dir",
    None,
    "Store of trained main-task models shared by runs (default: seed<S>/models/ in the "
    "workdir); keyed by everything a model depends on, so runs that differ only in pretext "
    "or methods train their common models once.",
)
flags.DEFINE_float("width", None, "VGG16 channel multiplier (1.0 = the paper's network).")
flags.DEFINE_integer("epochs", None, "Main-task epochs per cycle.")
flags.DEFINE_integer("pretext_epochs", None, "Rotation pretext epochs.")
flags.DEFINE_integer("pretext_seed", None, "Share one pretext network (this seed's) by all seeds.")
flags.DEFINE_integer("batch_size", None, "Main-task batch size.")
flags.DEFINE_integer("pretext_batch_size", None, "Pretext batch size (images; 4 views each).")
flags.DEFINE_integer("eval_batch_size", None, "Inference batch size.")
flags.DEFINE_float("lr", None, "Main-task learning rate.")
flags.DEFINE_enum("recipe", None, ["paper", "small_data"], "Main-task training recipe.")
flags.DEFINE_list("milestones", None, "Main-task epochs where the learning rate drops 10x.")
flags.DEFINE_list("pretext_milestones", None, "Pretext epochs where the learning rate drops 10x.")
flags.DEFINE_float("beta", None, "Fixed balancing factor (default: searched on validation).")
flags.DEFINE_list("beta_grid", None, "Beta search candidates.")
flags.DEFINE_integer(
    "beta_search_cycles", None, "Cycles run per beta candidate (default: --beta_search_fraction)."
)
flags.DEFINE_float(
    "beta_search_fraction", None, "Labeled fraction the beta search reaches (paper Eq. 9: 0.15)."
)
flags.DEFINE_integer("num_clusters", None, "K for K-means (default: number of classes).")
flags.DEFINE_enum("bal_sampler", None, ["confidence", "entropy", "kmeans", "random"], "Ablation.")
flags.DEFINE_enum("cdd_order", None, ["ascending", "descending"], "Ablation.")
flags.DEFINE_enum("indicator", None, ["cdd", "nearest_distance", "pretext_loss"], "Ablation.")
flags.DEFINE_enum("subpools", None, ["adaptive", "uniform"], "Ablation.")
flags.DEFINE_enum("window_variant", None, ["paper", "released"], "Sub-pool window units.")
flags.DEFINE_bool("normalize_logits", None, "Released code's max softmax(z/||z||).")
flags.DEFINE_bool("warm_start", None, "Override: warm start (default small/medium) or scratch.")
flags.DEFINE_enum("augment", None, ["crop_flip", "crop", "none"], "Training augmentation.")
flags.DEFINE_integer("kmeans_n_init", None, "K-means restarts, lowest inertia kept.")
flags.DEFINE_enum(
    "pretext_feature", None, ["upright", "random_rotation"], "Pretext feature view (SPEC Step 2)."
)
flags.DEFINE_bool("pt4al_normalize_logits", None, "PT4AL ranks by max softmax(z/||z||).")
flags.DEFINE_integer("window_budget", None, "A of --window_variant=released (its --addendum).")
flags.DEFINE_enum("fractions_of", None, ["pool", "train"], "What budget fractions are of.")
flags.DEFINE_list("drop_classes", None, "Class names to drop, e.g. background_google.")
flags.DEFINE_float("resplit_test_fraction", None, "Pool train+test and draw this test share.")
flags.DEFINE_enum(
    "pretext",
    None,
    ["rotation", "simclr", "patches"],
    "Pretext features (default rotation, the paper's); patches: k-means patch features.",
)
flags.DEFINE_enum(
    "feature_layer",
    None,
    ["final", "block1", "block2", "block3", "block4", "block5"],
    "Pretext features to cluster: final (the paper's) or a pooled intermediate block.",
)
flags.DEFINE_float("simclr_lr", None, "Adam learning rate of the simclr pretext.")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices",
    None,
    "XLA:CPU devices the CPU is split into (default: one per core, a power of two up to 8; "
    "1: one device). Ignored when XLA_FLAGS sets a count; GPUs and TPUs are unaffected.",
)
flags.DEFINE_enum(
    "classifier",
    None,
    ["vgg", "linear"],
    "Classifier of every cycle: vgg (the paper's) or linear (a head on the patch features).",
)
flags.DEFINE_float(
    "switch_fraction",
    None,
    "bal_switch / bal_herding: TypiClust / MaxHerding picks while fewer than this fraction of "
    "the pool is labeled (0.1).",
)
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype (bf16: GPU/TPU only).")
flags.DEFINE_integer("steps_per_dispatch", None, "Optimizer steps per jitted call (GPU/TPU).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "One of several processes: calls jax.distributed.initialize() (the cluster is detected on "
    "TPU pods and SLURM; otherwise give the three flags below, as experiments.launch does).",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (with --distributed)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes (with --distributed).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0 first.")
_DISTRIBUTED_TIMEOUT = flags.DEFINE_integer(
    "distributed_timeout", 300, "Seconds to wait for every process to reach the coordinator."
)


def _ints(values) -> tuple[int, ...]:
    return tuple(int(x) for x in values)


def _floats(values) -> tuple[float, ...]:
    return tuple(float(x) for x in values)


# What the list parsers expect, for the one-line error of a bad value.
_EXPECTED = {_ints: "comma-separated integers", _floats: "comma-separated numbers"}

# flag name -> (Config field, parser)
_OVERRIDES = {
    "dataset": ("dataset", str),
    "data_dir": ("data_dir", str),
    "image_size": ("image_size", int),
    "train_subset": ("train_subset", int),
    "val_size": ("val_size", int),
    "test_subset": ("test_subset", int),
    "budget": ("budget", str),
    "fractions": ("fractions", _floats),
    "method": ("methods", lambda v: tuple(x.strip() for x in v)),
    "seeds": ("seeds", _ints),
    "width": ("width", float),
    "epochs": ("epochs", int),
    "pretext_epochs": ("pretext_epochs", int),
    "pretext_seed": ("pretext_seed", int),
    "batch_size": ("batch_size", int),
    "pretext_batch_size": ("pretext_batch_size", int),
    "eval_batch_size": ("eval_batch_size", int),
    "lr": ("lr", float),
    "recipe": ("recipe", str),
    "milestones": ("milestones", _ints),
    "pretext_milestones": ("pretext_milestones", _ints),
    "beta": ("beta", float),
    "beta_grid": ("beta_grid", _floats),
    "beta_search_cycles": ("beta_search_cycles", int),
    "num_clusters": ("num_clusters", int),
    "bal_sampler": ("bal_sampler", str),
    "cdd_order": ("cdd_order", str),
    "indicator": ("indicator", str),
    "subpools": ("subpools", str),
    "window_variant": ("window_variant", str),
    "normalize_logits": ("normalize_logits", bool),
    "warm_start": ("warm_start", bool),
    "beta_search_fraction": ("beta_search_fraction", float),
    "augment": ("augment", str),
    "kmeans_n_init": ("kmeans_n_init", int),
    "pretext_feature": ("pretext_feature", str),
    "pt4al_normalize_logits": ("pt4al_normalize_logits", bool),
    "window_budget": ("window_budget", int),
    "fractions_of": ("fractions_of", str),
    "drop_classes": ("drop_classes", lambda v: tuple(x.strip() for x in v if x.strip())),
    "resplit_test_fraction": ("resplit_test_fraction", float),
    "pretext": ("pretext", str),
    "feature_layer": ("feature_layer", str),
    "simclr_lr": ("simclr_lr", float),
    "classifier": ("classifier", str),
    "switch_fraction": ("switch_fraction", float),
    "dtype": ("dtype", str),
    "steps_per_dispatch": ("steps_per_dispatch", int),
}


def build_config(flag_values) -> config_lib.Config:
    """Preset (from --config or --dataset) with the explicitly given flags applied."""
    preset = flag_values["config"].value
    dataset = flag_values["dataset"].value
    if preset is None:
        preset = config_lib.DATASET_PRESETS.get(dataset or "digits", "cifar10")
    cfg = config_lib.PRESETS[preset]()
    changes = {}
    for name, (field, parse) in _OVERRIDES.items():
        value = flag_values[name].value
        if value is not None:
            try:
                changes[field] = parse(value)
            except ValueError:
                given = ",".join(value) if isinstance(value, list) else value
                if parse in _EXPECTED:
                    raise ConfigError(
                        f"--{name} must be {_EXPECTED[parse]}, got {given!r}"
                    ) from None
                raise ConfigError(f"--{name}={given!r} is not valid") from None
    return dataclasses.replace(cfg, **changes)


def default_workdir(cfg: config_lib.Config) -> str:
    """--workdir, or runs/<preset>_<budget>."""
    return _WORKDIR.value or f"runs/{cfg.preset}_{cfg.budget_name}"


class _DropOrbaxMergeNotice(std_logging.Filter):
    # Orbax warns on every single-process save that it has no per-process files to merge.
    def filter(self, record):
        return "Skipping merge of OCDBT checkpoints" not in record.getMessage()


def _log(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


def main(argv):
    if len(argv) > 1:
        # One line, not absl's full help: flags take the form --name=value.
        sys.exit(f"error: unexpected arguments {argv[1:]}; flags are --name=value (see --help)")
    if not flags.FLAGS["verbosity"].present:
        # Orbax and JAX log every checkpoint step at INFO; our own progress lines are printed.
        logging.set_verbosity(logging.WARNING)
    std_logging.getLogger("absl").addFilter(_DropOrbaxMergeNotice())
    given = [f.name for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID) if f.value is not None]
    if given and not _DISTRIBUTED.value:
        sys.exit(f"error: --{', --'.join(given)} only apply with --distributed")
    if _CPU_DEVICES.value is not None and _CPU_DEVICES.value < 1:
        sys.exit(f"error: --cpu_devices must be at least 1, got {_CPU_DEVICES.value}")
    parallel.use_cpu_devices(_CPU_DEVICES.value)
    try:
        parallel.maybe_initialize_distributed(
            enabled=_DISTRIBUTED.value,
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
            timeout_s=_DISTRIBUTED_TIMEOUT.value,
        )
    except parallel.DistributedError as e:
        sys.exit(f"error: {e}")
    # Process 0 speaks for the run; the others only report their own errors.
    log = _log if parallel.is_primary() else lambda line: None
    processes = f"{jax.process_count()} processes, " if jax.process_count() > 1 else ""
    log(f"JAX {jax.__version__}, {processes}devices: {jax.devices()}")
    try:
        cfg = build_config(flags.FLAGS)
        workdir = default_workdir(cfg)
        run_experiment(
            cfg, workdir, pretext_dir=_PRETEXT_DIR.value, model_dir=_MODEL_DIR.value, log=log
        )
    except (ConfigError, parallel.DistributedError) as e:
        sys.exit(f"error: {e}")
    primary = parallel.is_primary()
    parallel.shutdown_distributed()  # only after success: a failed peer would never reach it
    if primary:
        with open(f"{workdir}/summary.md") as f:
            print(f.read())
        print(f"Results in {workdir}/ (results.jsonl, summary.md, curves.png, selections.png)")


if __name__ == "__main__":
    app.run(main)
