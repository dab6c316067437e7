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

import logging as std_logging
import sys
import time

import jax
from absl import app, flags, logging

from bal_jax import parallel
from experiments import config as config_lib
from experiments import typed_flags
from experiments.pipeline import ConfigError, run_experiment

_CONFIG = flags.DEFINE_enum(
    "config", None, list(config_lib.PRESETS), "Preset (default: the dataset's preset)."
)
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
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices",
    None,
    "XLA:CPU devices the CPU is split into (default: one per core, a power of two up to 8; "
    "1: one device). Ignored when XLA_FLAGS sets a count; GPUs and TPUs are unaffected.",
)
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


# flag name -> parser of its value: the Config fields' and the training stages' flags.
_OVERRIDES = typed_flags.define(config_lib.flag_table())


def build_config(flag_values) -> config_lib.Config:
    """Preset (from --config or --dataset) with the explicitly given flags applied
    (config_lib.override)."""
    preset = flag_values["config"].value
    dataset = flag_values["dataset"].value
    if preset is None:
        preset = config_lib.DATASET_PRESETS.get(dataset or "digits", "cifar10")
    cfg = config_lib.PRESETS[preset]()
    changes = typed_flags.given(flag_values, _OVERRIDES, ConfigError)
    return config_lib.override(cfg, **changes)


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
