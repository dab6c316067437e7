#!/usr/bin/env bash
# The low-budget comparison on k-means patch features (--pretext=patches, issue 11), from the
# repository root (resumable: run it again after an interruption):
#
#   bash experiments/reports/cifar10_cpu_patches/run.sh
#
# One runner invocation on patch features; the paper's BAL on its own rotation features comes
# from the rotation run of experiments/reports/cifar10_cpu_lowbudget/run.sh (same seeds, same
# shared --model_dir, so random's models are restored, not trained again, and compare checks
# that both runs report random identically).
set -euo pipefail
cd "$(dirname "$0")/../../.."
seeds="${SEEDS:-0,1,2,3,4}"
methods="${METHODS:-typiclust,bal_typical,bal_switch,random}"
# One XLA device per core, as the low-budget run (models are keyed by device count).
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=$(nproc)}"
python -m experiments.main --config=cifar10_cpu --budget=small "--seeds=$seeds" --pretext_seed=0 \
  --model_dir=runs/models_cifar10_cpu --workdir=runs/cifar10_cpu_small_patches \
  --pretext=patches "--method=$methods"
python -m experiments.compare \
  --run=runs/cifar10_cpu_small_patches \
  --run=runs/cifar10_cpu_small_rotation:bal=bal_paper \
  --reference=bal_switch,bal_typical,bal_paper \
  --title="CIFAR-10 at CPU scale, small budget, k-means patch features" \
  --out=experiments/reports/cifar10_cpu_patches
