#!/usr/bin/env bash
# Issue 14, on the development machine: fetch what the GPU machine lacks for serving (it reaches no package
# registry; its python3 is 3.12 with torch, numpy, pillow, onnxruntime CPU), into the git-ignored .whl/:
#   .whl/small/   grpcio, protobuf, grpcio-health-checking, grpcio-reflection, prometheus-client, simplejpeg, py-spy, aiohttp
#                 with its dependencies (the Open Inference Protocol's HTTP side) (~14 MB)
#   .whl/parts/   onnxruntime-gpu (~256 MB, built for CUDA 13) split into parts that each fit one device call
# Then on the GPU machine, calls back to back (it keeps /tmp while warm, ~30 s idle). With 40 MiB parts
# (onnxruntime-gpu 1.31.1: part-aa .. part-af of 40 MiB, part-ag of 3.7 MiB), each call under 64 MiB with the
# ~11 MB working tree:
#   carry [".whl/parts/part-aa", ".whl/parts/NAME", ".whl/parts/SHA256"]:
#       bash bench/gpu/serving_gpu.sh part .whl/parts/part-aa .whl/parts/NAME .whl/parts/SHA256
#   carry [".whl/parts/part-ab"]: bash bench/gpu/serving_gpu.sh part .whl/parts/part-ab   (and so on to part-af)
#   last, timeout_s 600, carry [".whl/parts/part-ag", ".whl/small"]:
#       bash bench/gpu/serving_gpu.sh part .whl/parts/part-ag .whl/small && bash bench/gpu/serving_gpu.sh run
# The files stay in this working copy between sessions (git-ignored): if .whl/parts/SHA256 is there, skip this.
set -eu
cd "$(dirname "$0")/../.."
PART_MB=${PART_MB:-40}  # the working tree (~11 MB) and .whl/small (~8 MB) travel too: 64 MiB in all per call
mkdir -p .whl/small .whl/parts
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .whl/small \
  "grpcio>=1.85.1" "protobuf>=7.35.1,<8" "grpcio-health-checking>=1.85" "grpcio-reflection>=1.85" "prometheus-client>=0.19" "simplejpeg>=1.8" "py-spy>=0.3"
pip download -q --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .whl/small "aiohttp>=3.9"  # and its deps
if [ -z "${SKIP_BIG:-}" ]; then
  pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 -d .whl/big "onnxruntime-gpu==1.31.1"
  rm -f .whl/parts/part-*
  split -b "${PART_MB}M" .whl/big/onnxruntime_gpu-*.whl .whl/parts/part-
  (cd .whl/big && ls onnxruntime_gpu-*.whl > ../parts/NAME && sha256sum onnxruntime_gpu-*.whl > ../parts/SHA256)
fi
ls -la .whl/small .whl/parts 2>/dev/null
du -sh --exclude=.git --exclude=.venv --exclude=.whl --exclude=runs . | sed 's/^/working tree: /'
