#!/usr/bin/env bash
# Issue 14, on the development machine: fetch what the GPU machine lacks for serving (it reaches no package
# registry; its python3 is 3.12 with torch, numpy, pillow, onnxruntime CPU), into the git-ignored .whl/:
#   .whl/small/   grpcio, protobuf, grpcio-health-checking, grpcio-reflection, prometheus-client, simplejpeg, py-spy, aiohttp
#                 with its dependencies (the Open Inference Protocol's HTTP side) (~14 MB)
#   .whl/parts/   onnxruntime-gpu (~256 MB, built for CUDA 13) split into parts that each fit one device call
# Then on the GPU machine, calls back to back (it keeps /tmp while warm, only ~30 s idle: each call made as soon
# as the one before returns). This script prints the exact calls at its end. Each call carries the working
# tree too (64 MiB in all), so the parts are as large as the tree leaves room for: fewer calls, less device
# time spent on transfers and fewer gaps in which the machine can go back. With the 8.7 MB tree of 2026-11-30:
# 52 MiB parts, 5 calls (there were 7 of 40 MiB before). The small wheels ride with the last part.
# SKIP_BIG=1: only the small wheels. RESPLIT=1: only re-split the onnxruntime-gpu wheel already in .whl/
# (after the tree grew or shrank). The files stay in this working copy between sessions (git-ignored).
set -eu
cd "$(dirname "$0")/../.."
mkdir -p .whl/small .whl/parts .whl/big
if [ -z "${RESPLIT:-}" ]; then
  pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .whl/small \
    "grpcio>=1.85.1" "protobuf>=7.35.1,<8" "grpcio-health-checking>=1.85" "grpcio-reflection>=1.85" "prometheus-client>=0.19" "simplejpeg>=1.8" "py-spy>=0.3"
  pip download -q --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .whl/small "aiohttp>=3.9"  # and its deps
fi
if [ -z "${SKIP_BIG:-}" ]; then
  if [ -n "${RESPLIT:-}" ] && [ -f .whl/parts/NAME ] && ! ls .whl/big/onnxruntime_gpu-*.whl >/dev/null 2>&1; then
    cat .whl/parts/part-* > ".whl/big/$(cat .whl/parts/NAME)"  # the wheel from its parts, checked below
  elif [ -z "${RESPLIT:-}" ]; then
    pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 -d .whl/big "onnxruntime-gpu==1.31.1"
  fi
  (cd .whl/big && ls onnxruntime_gpu-*.whl > ../parts/NAME.new && sha256sum onnxruntime_gpu-*.whl > ../parts/SHA256.new)
  [ ! -f .whl/parts/SHA256 ] || cmp -s .whl/parts/SHA256 .whl/parts/SHA256.new || [ -z "${RESPLIT:-}" ] \
    || { echo "the wheel joined from .whl/parts does not match its SHA256: fetch again without RESPLIT"; exit 1; }
  mv .whl/parts/NAME.new .whl/parts/NAME && mv .whl/parts/SHA256.new .whl/parts/SHA256
  # What travels with every call besides the carried paths: tracked files and untracked ones git does not ignore.
  tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 cat 2>/dev/null | wc -c)
  part_mb=${PART_MB:-$(( (64 * 1048576 - tree) / 1048576 - 3 ))}  # 3 MiB left for the tree to grow
  small=$(du -cb .whl/small/*.whl | tail -n 1 | cut -f1)
  rm -f .whl/parts/part-*
  split -b "${part_mb}M" .whl/big/onnxruntime_gpu-*.whl .whl/parts/part-
  last=$(ls .whl/parts/part-* | tail -n 1)
  if [ $(( tree + $(stat -c %s "$last") + small )) -ge $(( 64 * 1048576 )) ]; then
    echo "note: the last part and .whl/small do not fit one call with the tree: carry .whl/small in a call of its own"
  fi
  rm -f .whl/big/onnxruntime_gpu-*.whl  # the parts hold it (RESPLIT joins them again)
  echo "working tree $tree bytes; parts of $part_mb MiB:"
  ls -la .whl/parts
  echo "The device calls, back to back:"
  first=1
  for p in .whl/parts/part-*; do
    if [ "$p" = "$last" ]; then
      echo "  carry [\"$p\", \".whl/small\"], timeout_s 600:"
      echo "    bash bench/gpu/serving_gpu.sh part $p .whl/small && bash bench/gpu/serving_gpu.sh run"
    elif [ -n "$first" ]; then
      echo "  carry [\"$p\", \".whl/parts/NAME\", \".whl/parts/SHA256\"]:"
      echo "    bash bench/gpu/serving_gpu.sh part $p .whl/parts/NAME .whl/parts/SHA256"
    else
      echo "  carry [\"$p\"]: bash bench/gpu/serving_gpu.sh part $p"
    fi
    first=
  done
fi
ls -la .whl/small
