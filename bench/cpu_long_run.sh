#!/usr/bin/env bash
# Issue 10's paper-length schedule on this 2-core CPU, carried across sessions: no GPU has been lent since the
# 53-epoch lease (RESULTS §19), and a session ends what it left running, so the run checkpoints every epoch
# (written atomically) and each session calls this again, which resumes it (or starts it where OUT holds no run).
# One run at a time, both cores (AuxNet-56-5 at ~350-460 img/s in bf16; torch.compile is slower on this CPU:
# 333 vs 460 img/s, measured 2026-12-03), ~2 minutes an epoch with its validation and test passes.
#   bash bench/cpu_long_run.sh            start or resume run c in the background; prints where it stands
#   bash bench/cpu_long_run.sh status     only print where it stands
# Run c: AuxNet-56-5 multiway + self-distillation (0.5, T = 3) + cosine with 5 warm-up epochs, seed 0, 160 epochs
# (the issue's floor), CIFAR-10's JPEG copy with 5,000 validation images held out of train: the recipe of the
# served default (§19), at three times the epochs.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/cpu_160ep/c_multiway_distill}
PY=${PY:-.venv/bin/python}
ARGS="--preset auxnet56_5 --method multiway --distill-weight 0.5 --distill-temperature 3 --schedule cosine
  --warmup-epochs 5 --dataset folder --data-dir ../shared/data/cifar10-jpeg --decode-cache /tmp/cifar10-decoded
  --epochs 160 --seed 0 --precision bf16 --out $OUT"
status() {
  local done_epochs
  done_epochs=0
  [ -f "$OUT/metrics.jsonl" ] && done_epochs=$(wc -l < "$OUT/metrics.jsonl")
  echo "$OUT: $done_epochs of 160 epochs done; running: $(pgrep -f -- "--out $OUT" > /dev/null && echo yes || echo no)"
  tail -n 2 "$OUT.log" 2>/dev/null
}
if [ "${1:-}" = status ]; then status; exit 0; fi
if pgrep -f -- "--out $OUT" > /dev/null; then echo "already running"; status; exit 0; fi
mkdir -p "$(dirname "$OUT")"
resume=""
[ -f "$OUT/last.pt" ] && resume="--resume"
# shellcheck disable=SC2086  # ARGS is a list of words
echo "python -m training.run $ARGS $resume" | tr -s ' \n' ' ' >> "$OUT.cmd"; echo >> "$OUT.cmd"
# shellcheck disable=SC2086
setsid nohup "$PY" -m training.run $ARGS $resume >> "$OUT.log" 2>&1 < /dev/null &
sleep 2
status
