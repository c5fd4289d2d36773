#!/usr/bin/env bash
# Would the CPU's long runs (bench/cpu_long_run.sh) finish sooner two at a time, one core each, than one at a time
# on both cores? Small convolutions (CIFAR's 32 x 32, 16-64 channels) split poorly over threads, so two processes
# of one thread may train more images a second in all than one of two. Alternating rounds, side by side in one
# run: A = one training.run with 2 threads; B = two at once with 1 thread each. Same network and recipe as run a
# (AuxNet-56-5 multiway, bf16), BATCHES steady-state batches each, no evaluation passes.
#   bash bench/cpu_thread_split.sh [OUT_DIR]      (pause any long run first: kill -STOP its pid, -CONT after)
set -u
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/cpu_thread_split}
ROUNDS=${ROUNDS:-2}
BATCHES=${BATCHES:-80}
PY=${PY:-.venv/bin/python}
ARGS="--preset auxnet56_5 --method multiway --dataset folder --data-dir ../shared/data/cifar10-jpeg
  --decode-cache /tmp/cifar10-decoded --epochs 1 --max-batches $BATCHES --no-eval --precision bf16 --seed 0"
mkdir -p "$OUT"
rate() { "$PY" -c "import json,sys; print(round(json.loads(open(sys.argv[1]).readlines()[-1])['images_per_s'], 1))" "$1/metrics.jsonl"; }
train() {  # threads, out
  OMP_NUM_THREADS=$1 "$PY" -m training.run $ARGS --out "$2" --overwrite > "$2.log" 2>&1
}
for r in $(seq 1 "$ROUNDS"); do
  start=$(date +%s.%N); train 2 "$OUT/a$r"; a_wall=$(echo "$(date +%s.%N) - $start" | bc)
  start=$(date +%s.%N); train 1 "$OUT/b${r}x" & train 1 "$OUT/b${r}y" & wait; b_wall=$(echo "$(date +%s.%N) - $start" | bc)
  a=$(rate "$OUT/a$r"); bx=$(rate "$OUT/b${r}x"); by=$(rate "$OUT/b${r}y")
  echo "round $r: A one run, 2 threads: $a img/s (wall ${a_wall%.*} s); B two runs, 1 thread each: $bx + $by =" \
       "$(echo "$bx + $by" | bc) img/s (wall ${b_wall%.*} s for twice the images); B/A $(echo "scale=3; ($bx + $by) / $a" | bc)"
done
