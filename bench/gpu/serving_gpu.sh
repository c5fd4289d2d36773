#!/usr/bin/env bash
# Issue 14 on the GPU machine (prepare with bench/gpu/fetch_serving_wheels.sh; see its header for the calls).
#   bash bench/gpu/serving_gpu.sh part .whl/parts/part-aa [.whl/small]   stash carried wheels in /tmp/whl
#   bash bench/gpu/serving_gpu.sh run                                     install, check, benchmark -> $OUT
# Rehearsal on a CPU (no wheels, the local environment): DEVICE=cpu bash bench/gpu/serving_gpu.sh run
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
DEVICE=${DEVICE:-cuda}
REQUESTS=${REQUESTS:-4000}
WORKERS=${WORKERS:-1 2 4}
mkdir -p /tmp/whl "$OUT"
case "${1:-}" in
  part)
    shift
    for f in "$@"; do cp -r "$f" /tmp/whl/; done
    ls -la /tmp/whl; exit 0 ;;
  run) ;;
  *) echo "usage: $0 part FILE... | run"; exit 2 ;;
esac
if [ "$DEVICE" = cuda ]; then
  name=$(cat /tmp/whl/NAME 2>/dev/null || cat .whl/parts/NAME)
  cat /tmp/whl/part-* > "/tmp/$name" || exit 1
  (cd /tmp && sha256sum -c /tmp/whl/SHA256 2>/dev/null || sha256sum -c "$OLDPWD/.whl/parts/SHA256") || { echo "wheel parts incomplete"; exit 1; }
  python3 -m pip install -q --no-deps --target /tmp/pydeps "/tmp/$name" /tmp/whl/small/*.whl || exit 1
  export PYTHONPATH=/tmp/pydeps:${PYTHONPATH:-}  # shadows the image's CPU onnxruntime and older grpc/protobuf
  export LD_LIBRARY_PATH=$(python3 -c "import nvidia, os; print(':'.join(os.path.join(p, d, 'lib') for p in nvidia.__path__ for d in os.listdir(p) if os.path.isdir(os.path.join(p, d, 'lib'))))"):${LD_LIBRARY_PATH:-}
fi
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; python3 -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())"; nproc) | tee "$OUT/machine.txt"
# 1. Correctness first: refuse to benchmark a silent CPU fallback.
python3 -m bench.gpu.serving_check --device "$DEVICE" --out "$OUT/check.json" > "$OUT/check.log" 2>&1
rc=$?; tail -n 5 "$OUT/check.log"
[ $rc -eq 0 ] || { echo "correctness check failed: no benchmark"; exit 1; }
# 2. The serving bench per worker count: enough client processes to saturate (the machine has 16 cores).
cores=$(nproc)
for w in $WORKERS; do
  threads=$(( cores / (2 * w) > 0 ? cores / (2 * w) : 1 ))
  timeout 150 python3 -m bench.serving --requests "$REQUESTS" --concurrency 64 --client-procs $(( cores / 2 > 1 ? cores / 2 : 1 )) \
    --server-args "--device $DEVICE --workers $w --threads $threads --max-batch 64" --max-batch 64 \
    --raw-device "$DEVICE" --raw-threads 1 --budgets-ms 2 5 \
    --data "${DATA:-samples/cifar10-test}" --per-class "${PER_CLASS:-20}" > "$OUT/serving_w$w.md" 2>&1
  tail -n 9 "$OUT/serving_w$w.md"
done
