#!/usr/bin/env bash
# The segmentation recipes' grid (issue 11): HeLa and the H&E set, quick profile, three seeds.
# Resumable: finished runs are skipped, so it can be run again across sessions until complete.
#   bash docs/benchmarks/seg_grid.sh            (from the repository root, after README's set-up)
#   THREADS=1 bash docs/benchmarks/seg_grid.sh  (one torch thread, beside another grid)
set -euo pipefail
.venv/bin/sparse-ext data fetch hela --dest data
.venv/bin/sparse-ext data fetch hgsc --dest data
bench() {  # bench DATASET FRACTIONS LOSSES SEEDS
  .venv/bin/sparse-ext benchmark --task seg --quick --data data --dataset "$1" --fractions "$2" \
    --losses "$3" --seeds "$4" --out "docs/benchmarks/seg_$1" --work-dirs work_dirs/bench \
    --threads "${THREADS:-2}"
}
for d in hela hgsc; do bench "$d" 10,30,50,100 threshold 0,1,2; done
# the annotated-fraction check (SparseLossAnnealingHook): told twice the true 30 %, and told right
for s in 0 1 2; do
  for d in hela hgsc; do bench "$d" 30 ece_f_double,ce_sampled_f_double,ece,ce_sampled "$s"; done
done
for s in 0 1 2; do
  for d in hela hgsc; do bench "$d" 50 ece,ce_sampled "$s"; done
done
# which recipe to recommend: the alternatives to ECE at 30 %, first seed
for d in hela hgsc; do bench "$d" 30 ce_sampled,nnpu 0; done
# the cells the "done when" reads first, every seed of both datasets
for s in 0 1 2; do
  for d in hela hgsc; do
    bench "$d" 30 ece "$s"
    bench "$d" 100 ce "$s"
    bench "$d" 30 ce "$s"
    bench "$d" 30 ce_sampled "$s"
  done
done
# the recommended recipe (ce_sampled) at 10 %
for s in 0 1 2; do
  for d in hela hgsc; do bench "$d" 10 ce_sampled "$s"; done
done
# misspecified f at a true 30 % (told 15 % and 60 %)
for s in 0 1 2; do
  for d in hela hgsc; do bench "$d" 30 ce_sampled_f_half,ce_sampled_f_double "$s"; done
done
for s in 0 1 2; do
  for d in hela hgsc; do bench "$d" 50 ce_sampled "$s"; done
done
for s in 0 1 2; do
  for d in hela hgsc; do
    bench "$d" 10 ece "$s"
    bench "$d" 30 ece_f_half,ece_f_double "$s"
    bench "$d" 50 ece "$s"
  done
done
# the ResNet recipe (MMSeg FCN, ResNetV1c-18) on HeLa
for s in 0 1 2; do bench hela 30 fcn_ce_sampled,fcn_ece "$s"; bench hela 100 fcn_ce "$s"; done
bench hela 30 fcn_ce 0,1,2  # the FCN's plain CE at the same 30 %
for s in 0 1 2; do
  for d in hela hgsc; do
    bench "$d" 30 nnpu,ce_sampled,ece_paper "$s"
    bench "$d" 10 ce,nnpu "$s"
    bench "$d" 50 ce,nnpu "$s"
  done
done
# the nnPU recipe with its hook (before it, it trained on the fallback f = 0.2: Dice 0.000 at 10 %)
for d in hela hgsc; do bench "$d" 10,30,50,100 nnpu 0,1,2; done
# the shipped ECE + focal recipe (Eq. 8) at 10-50 %
for d in hela hgsc; do bench "$d" 10,30,50 ece_focal 0; done
# the whole grid: every loss it names, every fraction, three seeds; then ECE as published
for d in hela hgsc; do bench "$d" 10,30,50,100 ce,focal,ece,nnpu,ce_sampled,ece_pkg 0,1,2; done
for d in hela hgsc; do bench "$d" 10,30,50,100 ece_paper 0,1,2; done
# f unknown: the fallback f = 0.2 the loss assumes, at true 10 % and 50 %
for s in 0 1 2; do
  for d in hela hgsc; do bench "$d" 10,50 ce_sampled_f_fallback "$s"; done
done
