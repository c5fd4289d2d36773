#!/usr/bin/env bash
# Issue 14 on the GPU machine (prepare with bench/gpu/fetch_serving_wheels.sh, which prints the device calls;
# RESPLIT=1 there re-sizes the parts to the working tree without fetching again).
#   bash bench/gpu/serving_gpu.sh part .whl/parts/part-aa [more files]   stash carried parts in /tmp/whl
#   bash bench/gpu/serving_gpu.sh run                                     install, check, benchmark -> $OUT
# Rehearsal on a CPU (no wheels, the local environment): DEVICE=cpu bash bench/gpu/serving_gpu.sh run
# Rehearsal of the install too, with the very wheels the GPU machine gets (onnxruntime-gpu imports and runs on a
# CPU): a Python 3.12 venv holding what that machine's image has (numpy 2.5.2, onnxruntime 1.30.0 CPU, to be
# shadowed, pillow; no grpcio, so the archive must supply it) first on PATH, each `part` command as the device calls give it, then
#   OUT=/tmp/o DEVICE=cpu INSTALL=1 REQUESTS=300 WORKERS=1 STATIC_WORKERS=1 BATCH_WORKERS=1 BUDGET_SECONDS=2 \
#     bash bench/gpu/serving_gpu.sh run          (2026-11-30, the 4-part archive, a Python 3.12.1 venv of only
#     numpy 2.5.2, onnxruntime 1.30.0 and pillow: 2 min 17 s, every step ran, 5 files)
# And the CUDA provider's libraries: with the LD_LIBRARY_PATH built below from torch 2.11.0+cu130's nvidia
# wheels (the image's torch), `ldd .../onnxruntime/capi/libonnxruntime_providers_cuda.so` resolves cuBLAS(Lt)
# 13, cuRAND 10 and cudart 13 under nvidia/cu13/lib (cuDNN 9, opened later, under nvidia/cudnn/lib); only the
# driver's libcuda.so.1 is missing on a CPU machine (checked 2026-11-30).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
DEVICE=${DEVICE:-cuda}
REQUESTS=${REQUESTS:-4000}
WORKERS=${WORKERS:-1 2 4}
STATIC_WORKERS=${STATIC_WORKERS:-1 4}
BATCH_WORKERS=${BATCH_WORKERS:-4}
mkdir -p /tmp/whl "$OUT"
case "${1:-}" in
  part)
    shift
    for f in "$@"; do cp -r "$f" /tmp/whl/; done
    ls -la /tmp/whl; exit 0 ;;
  run) ;;
  *) echo "usage: $0 part FILE... | run"; exit 2 ;;
esac
if [ "$DEVICE" = cuda ] || [ -n "${INSTALL:-}" ]; then  # INSTALL=1: rehearse the install on a CPU too
  # The parts join into pydeps.tar.xz: every carried wheel unzipped into one tree, what `pip install --no-deps
  # --target /tmp/pydeps` would write (fetch_serving_wheels.sh says why a tree and not the wheels).
  cat /tmp/whl/part-* > /tmp/pydeps.tar.xz || exit 1
  (cd /tmp && sha256sum -c /tmp/whl/SHA256 2>/dev/null || sha256sum -c "$OLDPWD/.whl/parts/SHA256") || { echo "archive parts incomplete"; exit 1; }
  rm -rf /tmp/pydeps
  python3 -c "import sys, tarfile; tarfile.open(sys.argv[1], 'r:xz').extractall(sys.argv[2], filter='data')" \
    /tmp/pydeps.tar.xz /tmp/pydeps || exit 1
  export PYTHONPATH=/tmp/pydeps:${PYTHONPATH:-}  # shadows the image's CPU onnxruntime and older grpc/protobuf
  export LD_LIBRARY_PATH=$(python3 -c "import nvidia, os; print(':'.join(os.path.join(p, d, 'lib') for p in nvidia.__path__ for d in os.listdir(p) if os.path.isdir(os.path.join(p, d, 'lib'))))" 2>/dev/null):${LD_LIBRARY_PATH:-}
  python3 -c "import onnxruntime, grpc, google.protobuf, simplejpeg, aiohttp; print('installed and imported from /tmp/pydeps:', onnxruntime.__file__, grpc.__version__)" || exit 1
fi
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; python3 -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())"; nproc) | tee "$OUT/check.log"
# 1. Correctness first: refuse to benchmark a silent CPU fallback. (Few files: the tool returns at most 8;
#    with the defaults: check.log, 3 + 1 + 2 serving tables, cost_and_budget.md = 7.)
python3 -m bench.gpu.serving_check --device "$DEVICE" --out /tmp/check.json >> "$OUT/check.log" 2>&1  # JSON in the log too
rc=$?; tail -n 5 "$OUT/check.log"
[ $rc -eq 0 ] || { echo "correctness check failed: no benchmark"; exit 1; }
# 2. The serving bench per worker count: enough client processes to saturate (the machine has 16 cores).
cores=$(nproc)
rm -f "$OUT"/serving_*.md  # serve appends (a rehearsal's OUT may hold an earlier run's tables)
serve() {  # serve NAME WORKERS EXTRA-SERVER-FLAGS EXTRA-BENCH-FLAGS: appends to $OUT/serving_NAME.md
  threads=$(( cores / (2 * $2) > 0 ? cores / (2 * $2) : 1 ))
  timeout --kill-after=10 150 python3 -m bench.serving --requests "$REQUESTS" --concurrency 64 --client-procs $(( cores / 2 > 1 ? cores / 2 : 1 )) \
    --server-args "--device $DEVICE --workers $2 --threads $threads --max-batch 64 $3" --max-batch 64 \
    --raw-device "$DEVICE" --raw-threads 1 --budgets-ms 2 5 $4 \
    --data "${DATA:-samples/cifar10-test}" --per-class "${PER_CLASS:-20}" >> "$OUT/serving_$1.md" 2>&1
  tail -n 10 "$OUT/serving_$1.md"
}
# Where one server process's time goes on this machine: py-spy (carried in .whl/small) samples the first
# serving run's server through its measured policies, summarised into check.log (bench/profile_top.py).
# Best effort: without ptrace permission it only says so.
spy=$(command -v py-spy || find /tmp/pydeps -name py-spy -type f 2>/dev/null | head -n 1)
[ -n "$spy" ] && chmod +x "$spy" 2>/dev/null && export AUXNET_PY_SPY=$spy
first=1
for w in $WORKERS; do
  if [ -n "$first" ]; then
    serve "w$w" "$w" "" "--profile-server /tmp/profile_w$w.raw"
    { echo "## profile of the server, --workers $w, through its measured policies"
      python3 -m bench.profile_top "/tmp/profile_w$w.raw" --top 25 2>&1 || cat "/tmp/profile_w$w.raw.log"; } >> "$OUT/check.log"
  else
    serve "w$w" "$w" "" ""
  fi
  first=
done
#    The most workers again with partly stopped batches queued again instead of carried in place on the device
#    (--carry-stopped-rows off; auto carries on CUDA), into the same file.
w=${WORKERS##* }
serve "w$w" "$w" "--carry-stopped-rows off" ""
# 3. The latency target, early in case the call runs out of time: Poisson arrivals at 70% of the
#    calibrated policy's capacity, 5 ms budgets, with the finish-prediction margin (the default, RESULTS §15);
#    without it (--finish-margin-quantile 0) at the end.
rm -f "$OUT/cost_and_budget.md"
budget() {  # budget EXTRA-SERVER-FLAGS: appends to $OUT/cost_and_budget.md
  timeout --kill-after=10 150 python3 -m bench.budget_at_load --budget-ms 5 --load 0.7 --seconds "${BUDGET_SECONDS:-10}" \
    --concurrency 64 --requests "$REQUESTS" --client-procs $(( cores / 4 > 1 ? cores / 4 : 1 )) \
    --server-args "--device $DEVICE --workers ${BUDGET_WORKERS:-2} --threads $(( cores / 4 > 0 ? cores / 4 : 1 )) --max-batch 64 $1" \
    --data "${DATA:-samples/cifar10-test}" --per-class "${PER_CLASS:-20}" >> "$OUT/cost_and_budget.md" 2>&1
  tail -n 4 "$OUT/cost_and_budget.md"
}
budget ""
#    Where that budget's time goes, phase by phase and exit by exit, from the server's own request traces
#    (bench/trace_budget.py, RESULTS §37: on a CPU the event loop's lag and exit 0's queue; on a GPU unknown).
timeout --kill-after=10 120 python3 -m bench.trace_budget --budget-ms 5 --concurrency 16 --requests "$REQUESTS" \
  --server-args "--device $DEVICE --threads $(( cores / 4 > 0 ? cores / 4 : 1 )) --max-batch 64" \
  --data "${DATA:-samples/cifar10-test}" --per-class "${PER_CLASS:-20}" >> "$OUT/cost_and_budget.md" 2>&1
tail -n 6 "$OUT/cost_and_budget.md"
# 4. Calls of 16 images each (ClassifyBatch): the per-call gRPC and scheduling cost shared by 16 (RESULTS §12).
#    64 clients x 16 images in flight: the server's admission limit raised to match.
serve "w${BATCH_WORKERS}_16_per_call" "$BATCH_WORKERS" "--max-inflight 1024" "--images-per-request 16"
#    The same with short runs on the event loop's thread (--inline-compute-ms, RESULTS §14: less server CPU,
#    less overlap), into the same file (the tool returns at most 8).
serve "w${BATCH_WORKERS}_16_per_call" "$BATCH_WORKERS" "--max-inflight 1024 --inline-compute-ms 1" "--images-per-request 16"
# 5. Static buffers (CUDA graphs), if the check found them correct: one worker, and the most.
if python3 -c "import json, sys; sys.exit(0 if json.load(open('/tmp/check.json'))['static']['ok'] else 1)"; then
  for w in $STATIC_WORKERS; do serve "static_w$w" "$w" "--static-batches" "--raw-static"; done
else
  echo "static buffers / CUDA graphs failed the check ('static' in check.log): not benchmarked"
fi
# 6. The server's own CPU per image with the compute removed: one process's ceiling on this host's cores.
timeout --kill-after=10 150 python3 -m bench.request_cost --rounds 1 --requests "$REQUESTS" --concurrency 64 \
  --client-procs $(( cores / 2 > 1 ? cores / 2 : 1 )) --server-args "--workers ${COST_WORKERS:-1}" \
  --data "${DATA:-samples/cifar10-test}" --per-class "${PER_CLASS:-20}" >> "$OUT/cost_and_budget.md" 2>&1
tail -n 4 "$OUT/cost_and_budget.md"
# 7. The budget without the margin, beside step 3's.
budget "--finish-margin-quantile 0"
# 8. MPS=1 (unverified): the most workers again, their processes' kernels sharing the GPU at once instead of in
#    turns (bench/gpu/mps.sh says why), into the same file as step 2's rows for them; last, so nothing else runs
#    under MPS.
if [ -n "${MPS:-}" ] && [ "$DEVICE" = cuda ]; then
  source bench/gpu/mps.sh
  if start_mps "$OUT/check.log"; then
    echo "## --workers $w under CUDA MPS" >> "$OUT/serving_w$w.md"
    serve "w$w" "$w" "" ""
    stop_mps
  fi
fi
