#!/usr/bin/env bash
# Warm start against training from scratch each cycle (issue 24, item 2), from the repository
# root (resumable: run it again after an interruption):
#
#   bash experiments/reports/cifar10_cpu_warm_start/run.sh
#
# The VGG16 of the `cifar10_cpu` preset (width 1/8, recipe small_data) on random labeled sets,
# small budget (200 labels a cycle, 2-10 %), seeds 0-4: once keeping the previous cycle's
# weights (--warm_start, what the preset did until this report), once from a fresh
# initialisation every cycle (--nowarm_start). Random's picks do not depend on the model, so
# both arms train on the same labeled sets and the difference is the training alone; the
# validation split chooses the default, the test split only reports.
set -euo pipefail
cd "$(dirname "$0")/../../.."
seeds="${SEEDS:-0,1,2,3,4}"
common=(--config=cifar10_cpu --budget=small "--seeds=$seeds" --pretext_seed=0 --pretext=patches
  --method=random)
python -m experiments.main "${common[@]}" --warm_start --workdir=runs/cifar10_cpu_small_warm
python -m experiments.main "${common[@]}" --nowarm_start --workdir=runs/cifar10_cpu_small_scratch
python -m experiments.compare \
  --run=runs/cifar10_cpu_small_warm:random=random_warm \
  --run=runs/cifar10_cpu_small_scratch:random=random_scratch \
  --vary=warm_start --reference=random_scratch \
  --title="CIFAR-10 at CPU scale, small budget, VGG16 (small_data): warm start vs from scratch" \
  --out=experiments/reports/cifar10_cpu_warm_start
