#!/usr/bin/env bash
# The small budget with the linear head (--classifier=linear, issue 23/24), from the repository
# root (resumable: run it again after an interruption):
#
#   bash experiments/reports/cifar10_cpu_linear/run.sh
#
# One runner invocation on k-means patch features: every cycle fits a linear head on the
# patch features of the labeled images and their mirror images (L2 by 3-fold cross-validation
# on the labels; no VGG is trained, so one XLA device), and its probabilities drive the
# uncertainty methods.
# Selectors: the paper's rule `bal` (on patch features), the documented BAL variants, the
# low-budget peers TypiClust, ProbCover and MaxHerding, and random, confidence, margin,
# Core-Set and BADGE (bal_herding equals MaxHerding below the 10 % switch, so it runs in the
# cold-start form below). `experiments.compare` then adds the paired differences of every
# BAL-family row against every other method.
set -euo pipefail
cd "$(dirname "$0")/../../.."
seeds="${SEEDS:-0,1,2,3,4}"
methods="${METHODS:-bal,bal_switch,bal_typical,typiclust,probcover,maxherding,random,confidence,margin,coreset,badge}"
python -m experiments.main --config=cifar10_cpu --budget=small "--seeds=$seeds" --pretext_seed=0 \
  --pretext=patches --classifier=linear "--method=$methods" --cpu_devices=1 \
  --workdir=runs/cifar10_cpu_small_linear
# The switch variants as a cold start only (--switch_fraction=0.02: TypiClust's / MaxHerding's
# picks for the first 2 %, the paper's BAL (bal_cover: its weighted coverage in BAL's windows)
# after), reported as bal_switch_cold / bal_herding_cold / bal_cover_cold.
python -m experiments.main --config=cifar10_cpu --budget=small "--seeds=$seeds" --pretext_seed=0 \
  --pretext=patches --classifier=linear --method=bal_herding,bal_switch,bal_cover,random --cpu_devices=1 \
  --switch_fraction=0.02 --workdir=runs/cifar10_cpu_small_linear_cold
python -m experiments.compare \
  "--run=runs/cifar10_cpu_small_linear:$methods" \
  --run=runs/cifar10_cpu_small_linear_cold:bal_herding=bal_herding_cold,bal_switch=bal_switch_cold,bal_cover=bal_cover_cold,random \
  --reference=bal,bal_switch,bal_typical,bal_herding_cold,bal_switch_cold,bal_cover_cold \
  --title="CIFAR-10 at CPU scale, small budget, linear head on k-means patch features" \
  --out=experiments/reports/cifar10_cpu_linear
