#!/usr/bin/env bash
# The small-budget comparison of experiments/reports/cifar10_cpu.md with the small-data recipe
# (issue 10): the paper's BAL on its rotation features against PT4AL, random, confidence,
# entropy and Core-Set, 5 seeds, one shared pretext network. From the repository root
# (resumable: run it again after an interruption):
#
#   bash experiments/reports/cifar10_cpu_small/run.sh
#
# The workdir and model store are those of experiments/reports/cifar10_cpu_patches/run.sh and
# cifar10_cpu_lowbudget/run.sh: methods already run there are restored, not trained again.
set -euo pipefail
cd "$(dirname "$0")/../../.."
seeds="${SEEDS:-0,1,2,3,4}"
# One XLA device per core, as the other low-budget runs (models are keyed by device count).
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=$(nproc)}"
python -m experiments.main --config=cifar10_cpu --budget=small "--seeds=$seeds" \
  --pretext_seed=0 --model_dir=runs/models_cifar10_cpu --workdir=runs/cifar10_cpu_small_rotation \
  --warm_start \
  --method=bal,pt4al,random,confidence,entropy,coreset
python -m experiments.compare --run=runs/cifar10_cpu_small_rotation --reference=bal \
  --title="CIFAR-10 at CPU scale, small budget, small-data recipe" \
  --out=experiments/reports/cifar10_cpu_small
