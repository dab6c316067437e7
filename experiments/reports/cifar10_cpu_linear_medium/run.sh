#!/usr/bin/env bash
# The medium budget (10-40 %) with the linear head (--classifier=linear, issue 24), from the
# repository root (resumable: run it again after an interruption; seeds run one after another,
# so an interrupted run has every method of its first seeds):
#
#   bash experiments/reports/cifar10_cpu_linear_medium/run.sh
#
# The same setting as experiments/reports/cifar10_cpu_linear/run.sh (patch features, a linear
# head refitted every cycle on the labels and their mirror images, L2 by 3-fold CV on the
# labels, beta by Eq. 9 on the validation split), 1,000 labels a cycle from 1,000 to 4,000.
set -euo pipefail
cd "$(dirname "$0")/../../.."
seeds="${SEEDS:-0,1,2,3,4}"
methods="${METHODS:-bal,bal_switch,bal_herding,bal_cover,typiclust,probcover,maxherding,random,confidence,coreset,badge}"
python -m experiments.main --config=cifar10_cpu --budget=medium "--seeds=$seeds" --pretext_seed=0 \
  --pretext=patches --classifier=linear "--method=$methods" --cpu_devices=1 \
  --workdir=runs/cifar10_cpu_medium_linear
python -m experiments.compare \
  "--run=runs/cifar10_cpu_medium_linear:$methods" \
  --reference=bal,bal_switch,bal_herding,bal_cover \
  --title="CIFAR-10 at CPU scale, medium budget, linear head on k-means patch features" \
  --out=experiments/reports/cifar10_cpu_linear_medium
