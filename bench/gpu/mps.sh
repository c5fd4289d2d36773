# Sourced by bench/gpu/paper_runs.sh and serving_gpu.sh: CUDA's Multi-Process Service, so that several
# processes' kernels share the GPU at once instead of taking turns. Why: the first lease measured one training
# run alone at 18,079 img/s, two side by side 22,115 in all and eight 21,687, which is what time-slicing gives
# when one process's small kernels (16-64 channels at 32x32) keep the GPU occupied but far from full; serving
# with --workers N is N processes on one GPU in the same way.
# UNVERIFIED on the GPU machine (the daemon may be missing there). A CUDA client that cannot reach the daemon
# runs as without MPS (NVIDIA's nvidia-cuda-mps-control(1)), and one that fails under it makes start_mps stop
# the daemon, so the worst case is time-slicing, as before. The kernels, hence the results, are the same. The
# card's settings (compute mode and the rest) are left as they are.

start_mps() {  # start_mps LOG: start the daemon, check a CUDA client works under it; one line into LOG either way
  PATH=$PATH:/usr/local/nvidia/bin
  if ! command -v nvidia-cuda-mps-control > /dev/null; then
    echo "mps: off, nvidia-cuda-mps-control not found" | tee -a "$1"
    return 1
  fi
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps/pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps/log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  nvidia-cuda-mps-control -d 2>&1  # says so if a daemon of an earlier call still runs: that one serves
  if timeout 45 python3 -c "import torch; assert float(torch.ones(8, device='cuda').sum()) == 8" > /tmp/mps/probe.log 2>&1; then
    echo "mps: on; servers: $(echo get_server_list | nvidia-cuda-mps-control 2>&1 | tr '\n' ' ')" | tee -a "$1"
    return 0
  fi
  echo "mps: off, a CUDA client failed under it ($(tail -n 1 /tmp/mps/probe.log)); daemon stopped" | tee -a "$1"
  stop_mps
  return 1
}

stop_mps() {  # stop the daemon start_mps started (a later call starts its own)
  if [ -n "${CUDA_MPS_PIPE_DIRECTORY:-}" ]; then
    echo quit | nvidia-cuda-mps-control > /dev/null 2>&1
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  fi
}
