#!/usr/bin/env bash
# The low-budget comparison of experiments/reports/cifar10_cpu_lowbudget.md, from the repository
# root (resumable: run it again after an interruption):
#
#   bash experiments/reports/cifar10_cpu_lowbudget/run.sh
#
# Two runner invocations that differ only in what the selection sees, one merged table:
#   1. SimCLR features (30 epochs, block 3): bal_typical, TypiClust and the baselines;
#   2. the paper's rotation features: the paper's BAL (unchanged) and PT4AL.
# The baselines (random, confidence, entropy, Core-Set) do not use pretext features: with the
# shared --model_dir the second run restores their models instead of training them again, and
# experiments.compare checks that both runs report them identically.
set -euo pipefail
cd "$(dirname "$0")/../../.."
seeds="${SEEDS:-0,1,2,3,4}"
# Methods of each run (override to add more later; a workdir resumes with new methods added).
simclr_methods="${SIMCLR_METHODS:-bal_typical,typiclust,random,confidence,entropy,coreset}"
rotation_methods="${ROTATION_METHODS:-bal,pt4al,random,confidence,entropy,coreset}"
# One XLA device per core: on a 2-core CPU, 1.7x faster training than one device (README,
# Performance). Models are keyed by device count, so a rerun must keep it.
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=$(nproc)}"
# --warm_start: the preset's default when these tables were run (it trains from scratch now,
# experiments/reports/cifar10_cpu_warm_start.md).
common=(--config=cifar10_cpu --budget=small "--seeds=$seeds" --pretext_seed=0
  --model_dir=runs/models_cifar10_cpu --warm_start)
python -m experiments.main "${common[@]}" --workdir=runs/cifar10_cpu_small_simclr \
  --pretext=simclr --pretext_epochs=30 --feature_layer=block3 \
  "--method=$simclr_methods"
python -m experiments.main "${common[@]}" --workdir=runs/cifar10_cpu_small_rotation \
  "--method=$rotation_methods"
# From the rotation run only what needs rotation features: the paper's BAL (renamed) and PT4AL.
rotation_rows="bal=bal_paper"
if [[ ",$rotation_methods," == *,pt4al,* ]]; then rotation_rows+=",pt4al"; fi
python -m experiments.compare \
  --run=runs/cifar10_cpu_small_simclr \
  "--run=runs/cifar10_cpu_small_rotation:$rotation_rows" \
  --reference=bal_typical,bal_paper \
  --title="CIFAR-10 at CPU scale, small budget: the paper's BAL and bal_typical" \
  --out=experiments/reports/cifar10_cpu_lowbudget
