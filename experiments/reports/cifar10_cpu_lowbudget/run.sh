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
common=(--config=cifar10_cpu --budget=small "--seeds=$seeds" --pretext_seed=0
  --model_dir=runs/models_cifar10_cpu)
python -m experiments.main "${common[@]}" --workdir=runs/cifar10_cpu_small_simclr \
  --pretext=simclr --pretext_epochs=30 --feature_layer=block3 \
  --method=bal_typical,typiclust,random,confidence,entropy,coreset
python -m experiments.main "${common[@]}" --workdir=runs/cifar10_cpu_small_rotation \
  --method=bal,pt4al,random,confidence,entropy,coreset
python -m experiments.compare \
  --run=runs/cifar10_cpu_small_simclr \
  --run=runs/cifar10_cpu_small_rotation:bal=bal_paper,pt4al \
  --reference=bal_typical,bal_paper \
  --title="CIFAR-10 at CPU scale, small budget: the paper's BAL and bal_typical" \
  --out=experiments/reports/cifar10_cpu_lowbudget
