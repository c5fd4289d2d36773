#!/usr/bin/env bash
# One device call (issue 5): unpack CIFAR-10 JPEG, train the comparison runs side by side on one GPU,
# and copy their checkpoints and metrics under $OUT as they go, so a timeout still returns them.
# Usage (device tool, carry .gpudata): EPOCHS=30 DEADLINE_S=480 bash bench/gpu/train_runs.sh
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
EPOCHS=${EPOCHS:-30}
DEADLINE_S=${DEADLINE_S:-480}
EXTRA=${EXTRA:-}
OUT=${OUT:-/tmp/out}
RUNS=/tmp/runs
mkdir -p "$RUNS" "$OUT"
python3 bench/gpu/pack_jpeg_folder.py unpack .gpudata/cifar10 /tmp/cifar10-jpeg || exit 1
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch; print(torch.__version__)"; nproc) > "$RUNS/machine.txt" 2>&1
common="--dataset folder --data-dir /tmp/cifar10-jpeg --epochs $EPOCHS --seed 0 --workers 2 $EXTRA"
declare -A cmd=(
  [multiway]="--preset auxnet56_5 --method multiway"
  [joint]="--preset auxnet56_5 --method joint"
  [none]="--preset auxnet56_5 --method none"
  [jointwd]="--preset auxnet56_5 --method joint --joint-match-multiway-decay"
  [aux44]="--preset auxnet44_3 --method multiway"
)
for name in "${!cmd[@]}"; do
  echo "python -m training.run ${cmd[$name]} $common" > "$RUNS/$name.cmd"
  python3 -m training.run ${cmd[$name]} $common --out "$RUNS/$name" > "$RUNS/$name.log" 2>&1 &
done
sync_out() {
  for name in "${!cmd[@]}"; do
    [ -f "$RUNS/$name/last.pt" ] && cp "$RUNS/$name/last.pt" "$OUT/ckpt_$name.pt"
  done
  tar czf "$OUT/runs.tar.gz" --exclude='*.pt' -C /tmp runs
}
start=$SECONDS
while [ -n "$(jobs -r)" ] && [ $((SECONDS - start)) -lt "$DEADLINE_S" ]; do
  sleep 15
  sync_out
  echo "t=$((SECONDS - start))s $(for n in "${!cmd[@]}"; do printf '%s:%s ' "$n" "$(wc -l < "$RUNS/$n/metrics.jsonl" 2>/dev/null || echo 0)"; done)"
done
kill $(jobs -p) 2>/dev/null
wait
# The step benchmark only on an otherwise idle GPU, and only if the budget still allows it.
if [ $((SECONDS - start)) -lt $((DEADLINE_S - 30)) ]; then
  timeout 60 python3 -m bench.train_step --device cuda --steps 20 --rounds 3 > "$RUNS/train_step_gpu.md" 2>&1
fi
sync_out
tail -n 3 "$RUNS"/*.log
