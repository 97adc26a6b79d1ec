#!/usr/bin/env bash
# The embedded-data study of docs/RESULTS.md: train each objective with two seeds, then evaluate
# every export with bin/evaluate.py. Usage: bash docs/study/run_study.sh Linf|L2 [OUT_DIR]
# SEEDS="0" and ONLY="standard mma" restrict the runs (tests/test_study.py replays one row so);
# PROTOCOL=all adds AutoAttack to the evaluation (docs/RESULTS.md, "Under AutoAttack").
set -euo pipefail
norm=${1:-Linf}
out=${2:-runs/study-$norm}
steps=700    # 10 epochs of the 3,500 embedded training digits at batch 50
common="--dataset=mnist_5k --norm=$norm --model=lenet5_madry --nb_iter=10 --train_steps=$steps \
  --learning_rate=1e-3 --checkpoint_every=350 --log_every=350"
if [ "$norm" = Linf ]; then
  runs="standard:--objective=standard pgd_at:--objective=pgd_at@--pgd_eps=0.3 \
        mma:--objective=mma@--hinge_maxeps=0.45 omma:--objective=omma@--hinge_maxeps=0.45"
  eval_flags="--eps=0.1,0.2,0.3,0.4"
else
  runs="standard:--objective=standard pgd_at:--objective=pgd_at@--pgd_eps=2.0 \
        mma:--objective=mma@--hinge_maxeps=2.0 mma_dmax4:--objective=mma@--hinge_maxeps=4.0"
  eval_flags="--eps=1,2,3,4"
fi
mkdir -p "$out"
for seed in ${SEEDS:-0 1}; do
  for run in $runs; do
    name=${run%%:*}
    flags=${run#*:}
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
    dir="$out/$name-seed$seed"
    # Re-running the script resumes: finished evaluations and finished trainings are kept.
    if [ -f "$dir/eval/results.json" ]; then echo "$name seed $seed: done earlier"; continue; fi
    start=$(date +%s)
    trained="skipped (done earlier)"
    if [ ! -f "$dir/summary.json" ]; then
      # shellcheck disable=SC2086
      python bin/train.py $common ${flags//@/ } --seed=$seed --model_dir="$dir" > "$dir.train.log" 2>&1
      trained="$(($(date +%s) - start)) s"
    fi
    mid=$(date +%s)
    python bin/evaluate.py --saved_model="$dir/export" --dataset=mnist_5k --norm="$norm" \
      $eval_flags --num_examples=200 --nb_restart=4 --margin_nb_iter=20 --protocol=${PROTOCOL:-paper} \
      --margins=anpgd,pgd_bisection --output_dir="$dir/eval" --overwrite \
      > "$dir.eval.log" 2>&1
    end=$(date +%s)
    echo "$name seed $seed: train $trained, evaluate $((end - mid)) s" | tee -a "$out/times.txt"
  done
done
