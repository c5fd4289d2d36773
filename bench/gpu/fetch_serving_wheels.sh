#!/usr/bin/env bash
# Issue 14, on the development machine: fetch what the GPU machine lacks for serving (it reaches no package
# registry; its python3 is 3.12 with torch, numpy, pillow, onnxruntime CPU) and pack it for the device calls:
#   .whl/small/   grpcio, protobuf, grpcio-health-checking, grpcio-reflection, prometheus-client, simplejpeg, py-spy,
#                 opentelemetry-proto (since 2026-12-02; the server imports it only for --trace-mode opentelemetry),
#                 aiohttp with its dependencies (the Open Inference Protocol's HTTP side) (~14 MB of wheels)
#   .whl/big/     onnxruntime-gpu 1.31.1 (~256 MB, built for CUDA 13), kept so that a rebuild needs no download
#   .whl/parts/   pydeps.tar.xz split into parts that each fit one device call, its SHA256, and WHEELS (the
#                 SHA256 of every wheel it was made from)
# pydeps.tar.xz holds every wheel unzipped into one tree: what `pip install --no-deps --target` writes, less the
# console scripts (py-spy's binary stays under py_spy-*.data/scripts, where serving_gpu.sh finds it). Why not
# the wheels themselves: a wheel is deflate-compressed, and onnxruntime-gpu's CUDA provider (284 MB) deflates
# only to 231 MB where xz -9 reaches 186 MB: 213 MB in all instead of 270, one device call fewer (4, were 5).
# Then on the GPU machine, calls back to back (it keeps /tmp while warm, only ~30 s idle: each call made as soon
# as the one before returns). This script prints the exact calls at its end. Each call carries the working
# tree too (64 MiB in all), so the parts are as large as the tree leaves room for.
# NO_FETCH=1: pack the wheels already in .whl/ again, no download. RESPLIT=1: only re-split the archive the
# parts hold (after the tree grew or shrank). The files stay in this working copy between sessions (git-ignored).
set -eu
cd "$(dirname "$0")/../.."
ARCHIVE=pydeps.tar.xz
mkdir -p .whl/small .whl/parts .whl/big
if [ -n "${RESPLIT:-}" ]; then
  cat .whl/parts/part-* > ".whl/big/$ARCHIVE"  # the archive from its parts, checked before it is split again
  (cd .whl/big && sha256sum -c --quiet ../parts/SHA256) \
    || { echo "the archive joined from .whl/parts does not match its SHA256: run again without RESPLIT"; exit 1; }
else
  if [ -z "${NO_FETCH:-}" ]; then
    pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .whl/small \
      "grpcio>=1.85.1" "protobuf>=7.35.1,<8" "grpcio-health-checking>=1.85" "grpcio-reflection>=1.85" "prometheus-client>=0.19" "simplejpeg>=1.8" "py-spy>=0.3" \
      "opentelemetry-proto>=1.30"
    pip download -q --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .whl/small "aiohttp>=3.9"  # and its deps
    pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 -d .whl/big "onnxruntime-gpu==1.31.1"
  fi
  ls .whl/big/onnxruntime_gpu-*.whl >/dev/null || { echo "no onnxruntime-gpu wheel in .whl/big: run without NO_FETCH"; exit 1; }
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  for w in .whl/big/onnxruntime_gpu-*.whl .whl/small/*.whl; do unzip -q -o "$w" -d "$stage/tree"; done
  (cd .whl && sha256sum big/onnxruntime_gpu-*.whl small/*.whl) > .whl/parts/WHEELS
  tar cf - -C "$stage/tree" . | xz -9 -T0 > "$stage/$ARCHIVE"  # ~2 min on 2 cores
  mv "$stage/$ARCHIVE" ".whl/big/$ARCHIVE"
  (cd .whl/big && sha256sum "$ARCHIVE") > .whl/parts/SHA256
  rm -f .whl/parts/NAME  # the wheel's name, when the parts were of the wheel itself (until 2026-11-30)
fi
# What travels with every call besides the carried paths: tracked files and untracked ones git does not ignore.
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 cat 2>/dev/null | wc -c)
part_mb=${PART_MB:-$(( (64 * 1048576 - tree) / 1048576 - 2 ))}  # 2-3 MiB left for the tree to grow
rm -f .whl/parts/part-*
split -b "${part_mb}M" ".whl/big/$ARCHIVE" .whl/parts/part-
rm -f ".whl/big/$ARCHIVE"  # the parts hold it (RESPLIT joins them again)
echo "working tree $tree bytes; $ARCHIVE in parts of $part_mb MiB:"
ls -la .whl/parts
echo "The device calls, back to back (the first also carries the archive's SHA256):"
parts=(.whl/parts/part-*)
last=${parts[-1]}
for p in "${parts[@]}"; do
  carry="\"$p\"" files=$p
  [ "$p" = "${parts[0]}" ] && carry="$carry, \".whl/parts/SHA256\"" && files="$files .whl/parts/SHA256"
  if [ "$p" = "$last" ]; then
    echo "  carry [$carry], timeout_s 600:"
    echo "    bash bench/gpu/serving_gpu.sh part $files && bash bench/gpu/serving_gpu.sh run"
  else
    echo "  carry [$carry]:"
    echo "    bash bench/gpu/serving_gpu.sh part $files"
  fi
done
