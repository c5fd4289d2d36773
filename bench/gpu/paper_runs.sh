#!/usr/bin/env bash
# Issue 10's runs in ONE device call: measure the training speed, size the paper's schedule to the time left,
# train the runs side by side on one GPU, and copy checkpoints and metrics under $OUT as they go (a timeout
# still returns them). A second call with RESUME=1 continues every run from its last epoch, if the machine
# is still warm (runs live in /tmp/paper_runs).
#
# The packed CIFAR-10 JPEGs (55.3 MB, index 0.3 MB as xz) and the working tree (8.7 MB on 2026-11-30) fit one
# call's 64 MiB (67.1 MB), so the data travels with the run itself: one call, one machine start. Here, once:
#   python -m bench.gpu.pack_jpeg_folder pack ../shared/data/cifar10-jpeg .gpudata/one \
#     && (cd .gpudata/one && sha256sum blob.bin > SHA256)
# On the GPU machine (device tool), one call:
#   carry [".gpudata/one"], timeout_s 600:  PACK=.gpudata/one BUDGET_S=540 bash bench/gpu/paper_runs.sh
# If the tree has grown past ~11.5 MB (the tool refuses: "larger than 64 MiB"), the data travels in two parts
# over two calls back to back instead (the machine keeps /tmp while warm, ~30 s idle):
#   mkdir -p .gpudata/parts && split -b 30M .gpudata/one/blob.bin .gpudata/parts/blob.part- \
#     && cp .gpudata/one/index.json.xz .gpudata/one/SHA256 .gpudata/parts/
#   carry [".gpudata/parts/blob.part-aa", ".gpudata/parts/index.json.xz", ".gpudata/parts/SHA256"]:
#       bash bench/gpu/paper_runs.sh part .gpudata/parts/blob.part-aa .gpudata/parts/index.json.xz .gpudata/parts/SHA256
#   carry [".gpudata/parts/blob.part-ab"], timeout_s 560:
#       bash bench/gpu/paper_runs.sh part .gpudata/parts/blob.part-ab && BUDGET_S=480 bash bench/gpu/paper_runs.sh
# A later session, to take runs an earlier lease stopped at its time limit on to their last epoch (e.g. the
#   paper's 400, planned with FORCE_EPOCHS=400 ORDER=a_multiway): keep that lease's returned files (git-ignored,
#   e.g. .gpuruns/) and carry them with the data in parts, a call each, then
#   bash bench/gpu/paper_runs.sh restore-part .gpuruns/runs.tar.gz .gpuruns/ckpt_a_multiway.pt   (in call 1 or 2)
#   ... && RESTORE=/tmp/paper_restore BUDGET_S=480 bash bench/gpu/paper_runs.sh
# A later session, for the runs a first one did not start: ORDER="d_joint e_aux44 ..." FORCE_EPOCHS=<the first
#   session's epochs, plan.txt in its runs.tar.gz> bash bench/gpu/paper_runs.sh (compared runs share a schedule;
#   FORCE_EPOCHS starts every run in ORDER, so name only as many as its speed.txt says fit).
# MPS=1 (any call): the runs share the GPU through CUDA's Multi-Process Service (bench/gpu/mps.sh).
# Without probes (PROBE=0 FORCE_EPOCHS=E ORDER="..."): every named run starts at once for E epochs; the ones the
#   call's limit stops continue on a later lease with RESTORE (e.g. a and b of Table 6 at 160 epochs each).
# Rehearsal on a CPU (tiny, a few minutes):
#   DATA="--dataset synthetic" PROBE_BATCHES=3 MAX_BATCHES=4 FORCE_EPOCHS=2 BUDGET_S=120 OUT=/tmp/out \
#     bash bench/gpu/paper_runs.sh
#
# Runs, in the issue's priority order (paper recipe: batch 128, lr 0.1 / 10 at 40% and 60%, wd 1e-4,
# momentum 0.9, the same epochs for every run): a AuxNet-56-5 multiway; b ResNet-56 (none, probes);
# c a + self-distillation + cosine; d AuxNet-56-5 joint; e AuxNet-44-3 multiway and ResNet-110;
# f a with stage-transition shortcuts after BN-ReLU (He et al.'s code) against a's raw x; g a + cosine (c less
# the distillation).
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
BUDGET_S=${BUDGET_S:-480}          # wall seconds for everything in this call
MIN_EPOCHS=${MIN_EPOCHS:-160}      # the issue's floor; fewer runs are started rather than fewer epochs
MAX_EPOCHS=${MAX_EPOCHS:-400}      # the paper's schedule
FORCE_EPOCHS=${FORCE_EPOCHS:-}     # rehearsal: skip the sizing
PROBE_BATCHES=${PROBE_BATCHES:-150}  # the alone probe's two epochs
SIDE_BATCHES=${SIDE_BATCHES:-40}     # side-by-side probes: epochs this short, timed while all of them run
SIDE_SECONDS=${SIDE_SECONDS:-20}     # ... for this long once every one has compiled and finished an epoch
MAX_BATCHES=${MAX_BATCHES:-}
RESUME=${RESUME:-}
OUT=${OUT:-/tmp/out}
RUNS=/tmp/paper_runs
DATA=${DATA:-}
EXTRA=${EXTRA:---compile}
PROFILE_STEPS=${PROFILE_STEPS:-20}  # steps profiled in a short copy of the first run (0: none); see step 3
if [ "${1:-}" = part ] || [ "${1:-}" = restore-part ]; then  # stash carried files until the call that uses them
  dest=/tmp/gpudata && [ "$1" = restore-part ] && dest=/tmp/paper_restore
  shift
  mkdir -p "$dest"
  cp "$@" "$dest/" && ls -la "$dest"
  exit $?
fi
if [ -n "${RESTORE:-}" ]; then
  # Continue an earlier lease's runs on a fresh machine: RESTORE holds what that lease's $OUT returned
  # (runs.tar.gz: plan, flags, metrics, logs; ckpt_NAME.pt: each run's last epoch). Resuming is exact (the
  # batches of epoch e are drawn from seed and e alone), so a run may take several leases to its last epoch.
  [ -f "$RESTORE/runs.tar.gz" ] || { echo "RESTORE=$RESTORE holds no runs.tar.gz"; exit 2; }
  rm -rf "$RUNS" && tar xzf "$RESTORE/runs.tar.gz" -C /tmp || exit 1
  for f in "$RESTORE"/ckpt_*.pt; do
    [ -f "$f" ] || continue
    name=$(basename "$f" .pt) && name=${name#ckpt_}
    mkdir -p "$RUNS/$name" && cp "$f" "$RUNS/$name/last.pt"
  done
  RESUME=1
fi
mkdir -p "$RUNS" "$OUT"
start=$SECONDS
if [ -z "$DATA" ]; then
  if [ ! -d /tmp/cifar10-jpeg ]; then
    if [ -n "${PACK:-}" ]; then
      src=$PACK  # carried whole in this call
    else
      src=/tmp/gpudata && { cat /tmp/gpudata/blob.part-* > /tmp/gpudata/blob.bin || exit 1; }
    fi
    (cd "$src" && sha256sum -c SHA256) || { echo "packed data incomplete: carry $src whole, or every blob.part-*"; exit 1; }
    python3 -m bench.gpu.pack_jpeg_folder unpack "$src" /tmp/cifar10-jpeg || exit 1
  fi
  # Decoded once (by the first speed probe) into a cache every later process loads: ~13 s a process saved (RESULTS §17).
  DATA="--dataset folder --data-dir /tmp/cifar10-jpeg --decode-cache /tmp/cifar10-decoded"
  packed_cifar=1  # 351 batches an epoch: room for the profile below (a rehearsal's synthetic set has 14)
fi
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; python3 -c "import torch; print(torch.__version__)"; nproc) > "$RUNS/machine.txt" 2>&1
# MPS=1: the runs share the GPU through CUDA's Multi-Process Service (bench/gpu/mps.sh says why; unverified).
[ -n "${MPS:-}" ] && source bench/gpu/mps.sh && start_mps "$RUNS/machine.txt"
# ORDER: the runs to start, in priority order (default all). The plan starts only runs that finish their
# epochs in this call; a later session with a GPU sets ORDER to the runs not done yet.
read -r -a order <<< "${ORDER:-a_multiway b_resnet56 c_multiway_distill d_joint e_aux44 e_resnet110 f_multiway_preact g_multiway_cosine}"
source "$(dirname "$0")/../paper_recipes.sh"  # the runs' recipes, shared with bench/cpu_long_run.sh
declare -n cmd=PAPER_RECIPES
for name in "${order[@]}"; do
  [ -n "${cmd[$name]:-}" ] || { echo "ORDER: unknown run '$name'; known: ${!cmd[*]}"; exit 2; }
done
limit=${MAX_BATCHES:+--max-batches $MAX_BATCHES}

if [ -z "$RESUME" ] && [ "${PROBE:-1}" = 0 ]; then
  # No probes (their compiling costs a minute or two of the call): every run of ORDER for FORCE_EPOCHS; what
  # the call's limit stops, a later lease continues (RESTORE). Each run's metrics still give its speed.
  [ -n "$FORCE_EPOCHS" ] || { echo "PROBE=0 needs FORCE_EPOCHS (nothing measured to size the plan)"; exit 2; }
  NRUNS=${#order[@]} && EPOCHS=$FORCE_EPOCHS
  echo "$NRUNS $EPOCHS" > "$RUNS/plan.txt" && echo "${order[*]}" > "$RUNS/started.txt" && echo "$EXTRA" > "$RUNS/extra.txt"
elif [ -z "$RESUME" ]; then
  # 1. Speed: one run alone for two short epochs (the second: the steady training rate, and evaluation without
  #    compiling), then every run of ORDER side by side, not evaluated (--no-eval: no evaluation graphs compiled
  #    in a probe), timed as said below.
  probe_alone() {
    python3 -m training.run ${cmd[a_multiway]} $DATA --epochs 2 --max-batches "$PROBE_BATCHES" $1 \
      --out "$RUNS/probe1" --overwrite > "$RUNS/probe1.log" 2>&1
  }
  probe_alone "$EXTRA"
  if [ "$(wc -l < "$RUNS/probe1/metrics.jsonl" 2>/dev/null || echo 0)" -lt 2 ] && [ -n "${EXTRA// /}" ]; then
    # torch.compile needs Triton and a C compiler on the machine; without them, train uncompiled rather than not.
    { echo "probe with '$EXTRA' failed; measuring and training without it. Its log ends:"; tail -n 5 "$RUNS/probe1.log"; } \
      | tee "$RUNS/extra_failed.txt"
    EXTRA=" "
    rm -rf "$RUNS/probe1"
    probe_alone ""
  fi
  [ "$(wc -l < "$RUNS/probe1/metrics.jsonl" 2>/dev/null || echo 0)" -ge 2 ] \
    || { echo "the speed probe failed:"; tail -n 20 "$RUNS/probe1.log"; exit 1; }
  echo "$EXTRA" > "$RUNS/extra.txt"  # a RESUME call trains with the same flags
  # Whether CUDA graphs were captured (BatchNorm's running statistics are updated in training): inductor says
  # when it skips them. If it does, EXTRA="--compile --compile-mode default" may be as fast with less warm-up.
  grep -h -i -m 3 "skipping cudagraphs" "$RUNS/probe1.log" | sed 's/^/probe1: /' > "$RUNS/speed.txt"
  #    Their rates must be taken over the same seconds: a probe that compiles fast would otherwise time its steps
  #    while the others still compile, and the sum of such rates overstates what they share. So each runs short
  #    epochs (one metrics row each, wall time stamped) until all have finished one epoch, then SIDE_SECONDS more;
  #    the plan counts only the epochs that ended while all of them ran. A probe that exits early has failed:
  #    its run is not started.
  pids=()
  for n in ${!order[@]}; do
    python3 -m training.run ${cmd[${order[$n]}]} $DATA --epochs 100000 --max-batches "$SIDE_BATCHES" --no-eval $EXTRA \
      --out "$RUNS/probe_all_$n" --overwrite > "$RUNS/probe_all_$n.log" 2>&1 &
    pids+=($!)
  done
  all_ready=""
  while [ -n "$(jobs -r)" ] && [ $((SECONDS - start)) -lt $((BUDGET_S / 2)) ]; do
    sleep 2
    if [ -z "$all_ready" ]; then
      ready=1
      for n in ${!order[@]}; do
        f="$RUNS/probe_all_$n/metrics.jsonl"
        if [ ! -s "$f" ] && kill -0 "${pids[$n]}" 2>/dev/null; then ready=""; fi
      done
      [ -n "$ready" ] && all_ready=$SECONDS
    elif [ $((SECONDS - all_ready)) -ge "$SIDE_SECONDS" ]; then
      break
    fi
  done
  kill "${pids[@]}" 2>/dev/null
  wait
  # 2. Size: the most runs (in priority order) whose shared throughput fits MIN_EPOCHS in the time left,
  #    then as many epochs as fit, up to the paper's. An epoch: 45,000 training images at the run's share of
  #    the throughput, plus its evaluation (measured alone, slowed by the same share). Set aside: each run's
  #    warm-up (torch.compile, CUDA-graph capture: as long as the side-by-side probes' was; images_per_s leaves
  #    it out, images_per_s_with_warmup keeps it), and its first evaluation's compiling; then 10% margin.
  read -r NRUNS EPOCHS started < <(python3 -m bench.gpu.plan_runs "$RUNS" "$((BUDGET_S - (SECONDS - start) - 30))" \
    "$MIN_EPOCHS" "$MAX_EPOCHS" "${order[@]}" 2>&1 | tee -a "$RUNS/speed.txt" | tail -n 1)
  cat "$RUNS/speed.txt"
  [[ "${NRUNS:-}${EPOCHS:-}" =~ ^[0-9]+$ ]] || { echo "sizing the plan failed (speed.txt above)"; exit 1; }
  read -r -a order <<< "$started"  # the runs whose probes worked, in priority order
  [ -n "$FORCE_EPOCHS" ] && EPOCHS=$FORCE_EPOCHS && NRUNS=${#order[@]}
  echo "$NRUNS $EPOCHS" > "$RUNS/plan.txt"
  echo "${order[*]:0:$NRUNS}" > "$RUNS/started.txt"  # a resumed call continues these, whatever its ORDER
else
  read -r NRUNS EPOCHS < "$RUNS/plan.txt" || { echo "nothing to resume: $RUNS/plan.txt is missing"; exit 2; }
  [ -f "$RUNS/extra.txt" ] && EXTRA=$(cat "$RUNS/extra.txt")
  [ -f "$RUNS/started.txt" ] && read -r -a order < "$RUNS/started.txt" && NRUNS=${#order[@]}
fi
echo "plan: $NRUNS runs x $EPOCHS epochs (${order[*]:0:$NRUNS})" | tee -a "$RUNS/speed.txt"

# 3. Train side by side; the paper's schedule scaled to EPOCHS (milestones at 40% and 60%).
for name in "${order[@]:0:$NRUNS}"; do
  args="${cmd[$name]} $DATA --epochs $EPOCHS --seed 0 --workers 2 $EXTRA $limit"
  # the recipes' 5 warm-up epochs, fewer in a rehearsal's short runs (training.run refuses a warm-up as long as
  # the run; the last --warmup-epochs given wins)
  case "$args" in *--warmup-epochs*) [ "$EPOCHS" -le 5 ] && args="$args --warmup-epochs $(( EPOCHS - 1 ))" ;; esac
  echo "python -m training.run $args" > "$RUNS/$name.cmd"
  resume=""
  [ -n "$RESUME" ] && [ -f "$RUNS/$name/last.pt" ] && resume="--resume"
  python3 -m training.run $args --out "$RUNS/$name" $resume >> "$RUNS/$name.log" 2>&1 &
  [ "$name" = "${order[0]}" ] && profile_args=$args
done
# Where a step's time goes (training/profiling.py), for issue 10's 30,000 img/s: the first run's command again,
# for 40 batches of one epoch, PROFILE_STEPS of them profiled, in a process of its own so that a profiler
# failure (CUPTI with CUDA graphs has crashed before, in older CUDA) costs no training run. It shares the GPU
# with the runs, so its wall time per step is theirs side by side; its kernel times are its own. Compiled
# without CUDA graphs (--compile-mode default: the same inductor kernels, launched one by one), because CUPTI
# has timed kernels inside CUDA graphs wrongly before CUDA 13.1 (pytorch/kineto#1165) and the kernel time per
# step is the figure wanted: the runs' own wall time per step is in their metrics. Call 1 only.
if [ "$PROFILE_STEPS" -gt 0 ] && [ -z "$RESUME" ] && [ -n "${packed_cifar:-}" ]; then
  profile_cmd="$profile_args --compile-mode default --epochs 1 --max-batches $((PROFILE_STEPS + 20)) --no-eval"
  echo "python -m training.run $profile_cmd --profile-steps $PROFILE_STEPS" > "$RUNS/profile_${order[0]}.log"
  python3 -m training.run $profile_cmd --profile-steps "$PROFILE_STEPS" --out /tmp/paper_profile --overwrite \
    >> "$RUNS/profile_${order[0]}.log" 2>&1 &
fi
sync_out() {
  for name in "${order[@]:0:$NRUNS}"; do
    [ -f "$RUNS/$name/last.pt" ] && cp "$RUNS/$name/last.pt" "$OUT/ckpt_$name.pt"
  done
  cp /tmp/paper_profile/profile_epoch1.txt "$RUNS/profile_${order[0]}.txt" 2>/dev/null
  tar czf "$OUT/runs.tar.gz" --exclude='*.pt' -C /tmp paper_runs 2>/dev/null
}
while [ -n "$(jobs -r)" ] && [ $((SECONDS - start)) -lt "$BUDGET_S" ]; do
  sleep 10
  sync_out
  echo "t=$((SECONDS - start))s epochs done: $(for n in "${order[@]:0:$NRUNS}"; do f="$RUNS/$n/metrics.jsonl"; printf '%s:%s ' "$n" "$([ -f "$f" ] && wc -l < "$f" || echo 0)"; done)"
done
kill $(jobs -p) 2>/dev/null
wait
# The runs beside the paper's Tables 1, 2 and 6 (into runs.tar.gz too; an unfinished run says so in its label).
python3 -m bench.paper_tables --runs "$RUNS" > "$RUNS/tables.md" 2>&1
sync_out
[ -n "${MPS:-}" ] && stop_mps
tail -n 2 "$RUNS"/*.log
cat "$RUNS/tables.md"
