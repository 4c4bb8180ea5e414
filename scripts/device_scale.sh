#!/usr/bin/env bash
# Issue 15's scale table on the GPU machine: random LLaMA-7B-shaped (32 layers) and 70B-shaped (2 and 4 layers) F16
# GGUFs made there (far too large to carry), each converted by `slim2gguf convert --bits 2 --calib brown.txt
# --nsamples 32` with torch on the GPU; scripts/bench_scale.py's table: stage times, seconds per layer, peak RSS,
# peak GPU memory, decoder layers held at once, the projected full-depth time.
#
#   here:    bash scripts/device_scale.sh pack              -> .devs/ (gguf-py + dist-info, the converter, vocab, text)
#   device:  carry .devs:  bash scripts/device_scale.sh setup start     (the run goes on detached, ~15-25 min)
#            then:         bash scripts/device_scale.sh wait 540        (again until it says ended; table to $OUT)
#   MODELS="7b:32 70b:2 70b:4" (shape:layers) and NSAMPLES=32 choose the runs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/slim-out}
S=/tmp/scale
MODELS=${MODELS:-"7b:32 70b:2 70b:4"}
NSAMPLES=${NSAMPLES:-32}
TORCH_LOOP_LAYERS=${TORCH_LOOP_LAYERS-2}   # then a 7B-shaped model of this many layers with the torch GPTQ loop
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$S"
. scripts/device_lib.sh   # stamp, detach, wait_detached, run_state; Python unbuffered

stage_pack() {
  grep -qxF "/.devs/" .git/info/exclude || echo "/.devs/" >> .git/info/exclude
  rm -rf .devs && mkdir -p .devs/site .devs/llama .devs/data
  cp -r build/llama.cpp/gguf-py/gguf .devs/site/
  mkdir -p .devs/site/gguf-0.19.0.dist-info
  printf 'Metadata-Version: 2.1\nName: gguf\nVersion: 0.19.0\n' > .devs/site/gguf-0.19.0.dist-info/METADATA
  cp -r build/llama.cpp/conversion build/llama.cpp/convert_hf_to_gguf.py .devs/llama/
  cp build/llama.cpp/models/ggml-vocab-llama-spm.gguf ../shared/data/brown.txt .devs/data/
  find .devs -name __pycache__ -prune -exec rm -rf {} +
  du -sh .devs
}

stage_setup() {
  [ -d .devs/site/gguf ] || { echo "no .devs: carry it"; return 1; }
  mkdir -p build/llama.cpp && cp -r .devs/llama/. build/llama.cpp/ && rm -rf "$S/site" && cp -r .devs/site "$S/site" &&
    cp .devs/data/* "$S/" || return 1
  PYTHONPATH=$S/site:$PWD "$PY" -c "import torch, transformers, gguf; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"
  nproc; free -g | head -2; df -h /tmp | tail -1; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
}

stage_start() {
  export PYTHONPATH=$S/site:$PWD
  cat > "$S/run.sh" <<EOF
set -x
# the fused GPTQ kernel (quant/gptq_triton.py) against the torch loop, bit for bit, before it is used
"$PY" -m pytest -q -p no:cacheprovider tests/test_gptq_triton.py || export SLIM2GGUF_GPTQ_LOOP=torch
files=()
for m in $MODELS; do
  shape=\${m%%:*}; layers=\${m##*:}; f=$S/llama\$shape-\${layers}l.gguf
  [ -f "\$f" ] || "$PY" scripts/bench_scale.py make --shape \$shape --layers \$layers --vocab $S/ggml-vocab-llama-spm.gguf --out "\$f" || exit 1
  files+=("\$f")
done
"$PY" scripts/bench_scale.py run --models "\${files[@]}" --calib $S/brown.txt --nsamples $NSAMPLES --out-dir $S --md $S/scale.md
# the same 7B-shaped layers with GPTQ's torch column loop (the code before the fused kernel), for the speed-up
if [ -n "$TORCH_LOOP_LAYERS" ]; then
  f=$S/llama7b-\${TORCH_LOOP_LAYERS}l.gguf
  [ -f "\$f" ] || "$PY" scripts/bench_scale.py make --shape 7b --layers $TORCH_LOOP_LAYERS --vocab $S/ggml-vocab-llama-spm.gguf --out "\$f"
  SLIM2GGUF_GPTQ_LOOP=torch "$PY" scripts/bench_scale.py run --models "\$f" --calib $S/brown.txt --nsamples $NSAMPLES --out-dir $S --md $S/scale-torch-loop.md
fi
df -h /tmp | tail -1
EOF
  detach "$S"
  stamp "scale run started (pid $(cat "$S/run.pid")): $MODELS"
}

stage_wait() {
  wait_detached "$S" "${1:-540}"
  tail -c 2500 "$S/run.log" | tr '\r' '\n' | grep -v "^\s*$" | tail -14
  run_state "$S" "scale run"
  cp "$S"/scale*.md "$S"/scale*.json "$S/run.log" "$OUT/" 2>/dev/null
}

for stage in "$@"; do
  case "$stage" in
    pack|setup|start) "stage_$stage" || { echo "stage $stage failed"; exit 1; } ;;
    wait) shift_next=1 ;;
    [0-9]*) [ "${shift_next:-0}" = 1 ] && { stage_wait "$stage"; shift_next=0; } ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
[ "${shift_next:-0}" = 1 ] && stage_wait 540
exit 0
