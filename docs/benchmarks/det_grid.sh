#!/usr/bin/env bash
# The detection grid (issue 12): tiny Faster R-CNN, quick profile (400 iterations, about 7 min per
# run on 2 CPU cores), three seeds. Resumable: finished runs are skipped, so it is run again across
# sessions until complete. 1/patch = one annotation per 256 px patch (Zhao, Pang et al., 2021).
#   bash docs/benchmarks/det_grid.sh            (from the repository root, after README's set-up)
set -euo pipefail
.venv/bin/sparse-ext data fetch hela --dest data
.venv/bin/sparse-ext data fetch hgsc --dest data
bench() {  # bench DATASET FRACTIONS LOSSES SEEDS
  .venv/bin/sparse-ext benchmark --task det --quick --data data --dataset "$1" --fractions "$2" \
    --losses "$3" --seeds "$4" --out "docs/benchmarks/det_$1" --work-dirs work_dirs/bench
}
# the harness first: CE with every nucleus labelled must learn on every seed
for s in 0 1 2; do bench hela 100 ce "$s"; done
# the paper's protocol and 10 %: CE against the f-derived recipes
for s in 0 1 2; do
  bench hela 1/patch,10 ce,nnpu_sampled,bde,ece "$s"
done
# nnPU with the paper's fixed prior, pi chosen on validation recall (tools/det_recipe_checks.py)
for s in 0 1 2; do bench hela 1/patch,10 nnpu_pi02,nnpu_pi03,nnpu_pi04,nnpu_pi05,nnpu_pi06 "$s"; done
for s in 0 1 2; do bench hela 1/patch,10 focal,pu_classic "$s"; done
for s in 0 1 2; do bench hela 30 ce,nnpu_sampled,bde,ece "$s"; done
# the second dataset: CE against the recommended recipe
for s in 0 1 2; do bench hgsc 100,10 ce "$s"; bench hgsc 10 nnpu_sampled "$s"; done
