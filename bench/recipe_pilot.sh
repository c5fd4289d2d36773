#!/usr/bin/env bash
# A CPU pilot of issue 10's recipe options before the GPU lease spends minutes on them: does self-distillation
# (the final output teaching the auxiliary ones) strengthen the shallow exits, and is the cosine schedule what
# helps or hurts? A 20-layer AuxNet with exits at the same fractions of depth as AuxNet-56-5 (layers 5, 9, 13, 17,
# 20 against 15, 25, 35, 45, 56), CIFAR-10's JPEG copy, seed 0, EPOCHS epochs (default 15), every run otherwise
# the paper's recipe (batch 128, lr 0.1 / 10 at 40% and 60% of the epochs, wd 1e-4, momentum 0.9). Judged on the
# validation split (5,000 images held out of train); the test figures are printed beside, never used to choose.
# Two runs at a time, one core each (2-core AMD EPYC, 15 epochs: ~29 min a pair, ~1 hour for all four). At the
# end, `export choose --dry-run` ranks every run in OUT_DIR on validation by what early exit costs under its policy.
#   bash bench/recipe_pilot.sh [OUT_DIR]
#   SEED=1 ONLY="multiway multiway_distill" bash bench/recipe_pilot.sh runs/recipe_pilot_seed1   (seed noise)
# (multiway_distill025_cosine, half the distillation weight, multiway_cosine_ls / _ema, label smoothing 0.1 and
# an EMA of the weights at 0.999, and multiway_cosine_preact, are not in the default four: ONLY names them.)
set -u
OUT=${1:-runs/recipe_pilot}
EPOCHS=${EPOCHS:-15}
SEED=${SEED:-0}
DATA=${DATA:---dataset folder --data-dir ../shared/data/cifar10-jpeg --decode-cache runs/cifar10-decoded}
NET="--depth 20 --exits 5,9,13,17,20 --method multiway --seed $SEED --epochs $EPOCHS"
declare -A cmd=(
  [multiway]=""
  [multiway_distill]="--distill-weight 0.5 --distill-temperature 3"
  [multiway_cosine]="--schedule cosine --warmup-epochs 1"
  [multiway_distill_cosine]="--distill-weight 0.5 --distill-temperature 3 --schedule cosine --warmup-epochs 1"
  [multiway_distill025_cosine]="--distill-weight 0.25 --distill-temperature 3 --schedule cosine --warmup-epochs 1"
  # The two options not piloted before the lease. Label smoothing is known to make top-1 confidence a worse
  # judge of which answers are right (selective classification), which is what early exit stops on.
  [multiway_cosine_ls]="--schedule cosine --warmup-epochs 1 --label-smoothing 0.1"
  [multiway_cosine_ema]="--schedule cosine --warmup-epochs 1 --ema-decay 0.999"
  # Issue 10's review item: the stage-transition shortcut taken after BN-ReLU (He et al.'s pre-activation code)
  # instead of from raw x (the default, the committed models'); the GPU run f measures it at full scale.
  [multiway_cosine_preact]="--schedule cosine --warmup-epochs 1 --preact-shortcut"
)
read -r -a names <<< "${ONLY:-multiway multiway_distill multiway_cosine multiway_distill_cosine}"
for name in "${names[@]}"; do
  [ -n "${cmd[$name]+set}" ] || { echo "ONLY: unknown run '$name'; known: ${!cmd[*]}"; exit 2; }
done
mkdir -p "$OUT"
run() {
  echo "python -m training.run $NET ${cmd[$1]} $DATA" > "$OUT/$1.cmd"
  OMP_NUM_THREADS=1 python -m training.run $NET ${cmd[$1]} $DATA --out "$OUT/$1" > "$OUT/$1.log" 2>&1
}
for ((i = 0; i < ${#names[@]}; i += 2)); do  # two at a time
  run "${names[$i]}" &
  [ $((i + 1)) -lt ${#names[@]} ] && run "${names[$((i + 1))]}" &
  wait
done
tail -n 3 "$OUT"/*.log
python -m export choose --dry-run --data-dir ../shared/data/cifar10-jpeg \
  $(for d in "$OUT"/*/last.pt; do printf -- '--checkpoint %s ' "$(dirname "$d")"; done)
