#!/usr/bin/env bash
# The low-budget comparison on k-means patch features (--pretext=patches, issue 11), from the
# repository root (resumable: run it again after an interruption):
#
#   bash experiments/reports/cifar10_cpu_patches/run.sh
#
# Two runner invocations with one shared store of trained models (--model_dir), so random's
# models are trained once and compare checks that both runs report random identically:
# 1. patch features: every selector (confidence, entropy and Core-Set do not look at them, but
#    run here so that one table holds every baseline; `bal` here is the paper's rule on patch
#    features, reported as bal_patches);
# 2. the paper's BAL on its own rotation features (the workdir of the rotation half of
#    experiments/reports/cifar10_cpu_lowbudget/run.sh: if that ran, this only resumes it),
#    reported as bal_paper.
set -euo pipefail
cd "$(dirname "$0")/../../.."
seeds="${SEEDS:-0,1,2,3,4}"
methods="${METHODS:-typiclust,bal_typical,bal_switch,random,confidence,entropy,coreset,bal}"
# One XLA device per core, as the low-budget run (models are keyed by device count).
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=$(nproc)}"
# --warm_start: the preset's default when these tables were run (it trains from scratch now,
# experiments/reports/cifar10_cpu_warm_start.md).
common=(--config=cifar10_cpu --budget=small "--seeds=$seeds" --pretext_seed=0
  --model_dir=runs/models_cifar10_cpu --warm_start)
python -m experiments.main "${common[@]}" --workdir=runs/cifar10_cpu_small_patches \
  --pretext=patches "--method=$methods"
python -m experiments.main "${common[@]}" --workdir=runs/cifar10_cpu_small_rotation \
  --method=bal,random
# The paper's rule on patch features is renamed bal_patches (bal_paper: on rotation features).
patch_rows=$(echo ",$methods," | sed 's/,bal,/,bal=bal_patches,/; s/^,//; s/,$//')
references="bal_switch,bal_typical,bal_paper"
if [[ ",$methods," == *,bal,* ]]; then references+=",bal_patches"; fi
python -m experiments.compare \
  "--run=runs/cifar10_cpu_small_patches:$patch_rows" \
  --run=runs/cifar10_cpu_small_rotation:bal=bal_paper \
  "--reference=$references" \
  --title="CIFAR-10 at CPU scale, small budget, k-means patch features" \
  --out=experiments/reports/cifar10_cpu_patches
