# Shared by the device_*.sh scripts: a run that outlives the device call that starts it (the machine stays warm
# while later calls wait on it). Source it; DIR is the run's folder, holding run.sh.

export PYTHONUNBUFFERED=1   # the logs a later call reads show progress as it happens

# the llama.cpp targets a CUDA build makes for the device stages (device_cuda.sh builds them there,
# device_prebuild.sh here)
CUDA_TOOL_TARGETS=(llama-bench llama-quantize llama-perplexity llama-completion llama-imatrix test-backend-ops)

stamp() { echo "[$(date +%H:%M:%S)] $*"; }

# detach DIR: start DIR/run.sh in its own session (kept when the call returns), output to DIR/run.log
detach() {
  setsid nohup bash "$1/run.sh" > "$1/run.log" 2>&1 < /dev/null &
  echo $! > "$1/run.pid"
}

# wait_detached DIR LIMIT: until DIR's run ends or LIMIT seconds pass; status 0 if it has ended
wait_detached() {
  local t0=$SECONDS pid
  pid=$(cat "$1/run.pid")
  while [ $((SECONDS - t0)) -lt "$2" ] && kill -0 "$pid" 2>/dev/null; do sleep 10; done
  ! kill -0 "$pid" 2>/dev/null
}

# run_state DIR NAME: the GPU's load and whether DIR's run has ended
run_state() {
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
  kill -0 "$(cat "$1/run.pid")" 2>/dev/null && echo "$2 still running" || echo "$2 ended"
}
