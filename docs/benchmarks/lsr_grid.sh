#!/usr/bin/env bash
# Issue 13's grids: label super-resolution from block labels and max-min from image labels, HeLa
# and the H&E set, quick profile, three seeds. Resumable (finished runs are skipped).
#   bash docs/benchmarks/lsr_grid.sh            (from the repository root, after README's set-up)
#   THREADS=1 bash docs/benchmarks/lsr_grid.sh  (one torch thread, beside another grid)
set -euo pipefail
.venv/bin/sparse-ext data fetch hela --dest data
.venv/bin/sparse-ext data fetch hgsc --dest data
bench() {  # bench TASK DATASET LOSSES SEEDS
  .venv/bin/sparse-ext benchmark --task "$1" --quick --data data --dataset "$2" --losses "$3" \
    --seeds "$4" --out "docs/benchmarks/$1_$2" --work-dirs work_dirs/bench --threads "${THREADS:-2}"
}
for d in hela hgsc; do bench lsr "$d" threshold,lowres 0,1,2; done
for s in 0 1 2; do
  for d in hela hgsc; do bench lsr "$d" intra_inter,intra,inter "$s"; done
done
# max-min: the rows issue 13's "done when" reads (Belharbi et al.'s Table 4: CAM, FG only, FG + BG EEM)
for s in 0 1 2; do
  for d in hela hgsc; do bench maxmin "$d" cam,fg,fg_bg_eem "$s"; done
done
for s in 0 1 2; do
  for d in hela hgsc; do bench lsr "$d" ce_full "$s"; done
done
# "& high res" (Zhao, Hou et al., Table 3): LSR plus CE on the masks of 5 % of the blocks, and
# CE on those blocks alone (their "high res")
for s in 0 1 2; do
  for d in hgsc hela; do bench lsr "$d" inter_highres,highres "$s"; done
done
for s in 0 1 2; do bench lsr hgsc intra_inter_highres "$s"; done
# max-min: the rest of Belharbi et al.'s Table 4 rows
for s in 0 1 2; do
  for d in hela hgsc; do
    bench maxmin "$d" cam,fg,fg_bg_eem,eem,fg_bg_sem,sem,none,eem_lam1e-1 "$s"
  done
done
