#!/usr/bin/env bash
# Issue 13's Qwen2.5-Coder-1.5B rows on the GPU machine: SLIM files made with --target-bpw at each llama.cpp
# 2-bit type's whole-file bpw (scripts/report.py --match), converted with torch on the GPU, measured by the same
# patched CPU llama-perplexity build as the stock rows (carried from here), against the F16 made there from the
# same Q4_K_M. The 1.1 GB Q4_K_M cannot travel in one call (64 MiB), so it goes in pieces, one per call, to a
# machine kept warm by calling back to back.
#
#   here:    bash scripts/device_qwen.sh pack
#            -> .devq/ (gguf-py + its dist-info, the two texts, the model's sha256, the report's JSON)
#               .devq-p00/ .. .devq-pNN/ (one piece each: hard links into .cache/qwen-pieces/)
#   device:  call 1:  carry .devq .devcarry                   bash scripts/device_qwen.sh setup
#            calls 2..N: carry .devq-pNN                       bash scripts/device_qwen.sh piece
#            then:    carry .devq    bash scripts/device_qwen.sh join start   (the report runs on, detached)
#            then:    bash scripts/device_qwen.sh wait 540     (until it ends or 540 s pass; results to $OUT)
#            optional: cudabuild (beside the conversions), then cuda (GPU perplexity + llama-bench of mixed files)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/slim-out}
Q=/tmp/qwen
MODELS=.cache/models
Q4=$MODELS/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
F16=$MODELS/qwen2.5-coder-1.5b-instruct-f16.gguf
FIRST_PIECE_MIB=33       # the first call also carries .devq (CPU tools, texts, gguf-py: ~22 MB) and .devcarry (5 MB)
PIECE_MIB=61             # + the tracked tree (~2 MB) stays under the 64 MiB a call may carry
MATCH=${MATCH:-"Q2_K IQ2_XS IQ2_XXS IQ2_S IQ2_M Q3_K_S"}
VARIANTS=${VARIANTS:-"rtn slim minmax actorder trueseq levers gptq"}   # issue 12's lever rows (rtn, slim: kept)
REMAKE=${REMAKE:-"SliM at IQ2_XS"}   # rows of the carried JSON made again here (stage cuda runs that file on the GPU)
PLAN=${PLAN:-}            # a measured plan (convert --save-plan) to carry: the budget rows then measure nothing
JOBS=${JOBS:-}            # default: as many as the disk holds (each conversion: its checkpoints, a byte per weight, 1.3 GB, and the 0.9 GB file), <= 6
RUN=${RUN:-}             # a second report beside a running one: RUN=2 -> results2/, report2.log (merge the JSONs here)
PY=${PYTHON:-python3}        # the GPU machine's python has torch, transformers, numba
mkdir -p "$OUT" "$Q/parts"
export PYTHONUNBUFFERED=1
stamp() { echo "[$(date +%H:%M:%S)] $*"; }

stage_pack() {
  local src=$MODELS/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf pieces=.cache/qwen-pieces
  [ -f "$src" ] || { echo "no $src: run .venv/bin/python scripts/fetch_qwen.py first"; return 1; }
  for d in .devq '.devq-p*'; do
    grep -qxF "/$d/" .git/info/exclude || echo "/$d/" >> .git/info/exclude
  done
  rm -rf .devq .devq-p* "$pieces" && mkdir -p .devq/data/austen .devq/site "$pieces"
  cp -r build/llama.cpp/gguf-py/gguf .devq/site/
  # the CPU tools the rows are measured with and ggml's quantizers (bit_plan's stock types), and the converter
  mkdir -p .devq/bin .devq/llama
  (cd build/cpu/bin && cp -a llama-perplexity llama-quantize libllama-perplexity-impl.so libllama-quantize-impl.so \
     libggml*.so* libllama.so* libllama-common.so* "$OLDPWD/.devq/bin/")
  cp -r build/llama.cpp/conversion build/llama.cpp/convert_hf_to_gguf.py .devq/llama/
  find .devq -name __pycache__ -prune -exec rm -rf {} +
  mkdir -p .devq/site/gguf-0.19.0.dist-info
  printf 'Metadata-Version: 2.1\nName: gguf\nVersion: 0.19.0\n' > .devq/site/gguf-0.19.0.dist-info/METADATA
  cp ../shared/data/brown.txt .devq/data/ && cp ../shared/data/austen/pride_and_prejudice.txt .devq/data/austen/
  "${PYTHON:-.venv/bin/python}" - "$REMAKE" > .devq/qwen2.5-coder-1.5b.json <<'PY' || return 1
import json, sys
d = json.load(open("docs/results/qwen2.5-coder-1.5b.json"))
remake = [p for p in sys.argv[1].split(",") if p]
d["rows"] = [r for r in d["rows"] if not any(r["label"].startswith(p) for p in remake)]
print(json.dumps(d))
PY
  [ -z "$PLAN" ] || cp "$PLAN" .devq/plan-brown-16x512-f4.json
  sha256sum "$src" | cut -d' ' -f1 > .devq/sha256
  # the machine's copy of .git may be stale: report.py records this commit instead (-dirty: uncommitted changes)
  echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . || echo -dirty)" > .devq/commit
  stat -c %s "$src" > .devq/size
  head -c $((FIRST_PIECE_MIB << 20)) "$src" > "$pieces/part00"
  tail -c +$(((FIRST_PIECE_MIB << 20) + 1)) "$src" | split -b $((PIECE_MIB << 20)) -d -a 2 --numeric-suffixes=1 - "$pieces/part"
  for f in "$pieces"/part*; do
    local n=${f##*part}
    mkdir -p ".devq-p$n" && ln "$f" ".devq-p$n/"
  done
  ls .devq-p* -d | wc -l | xargs echo "pieces:"
  du -sh .devq
}

stage_setup() {
  [ -d .devq/site/gguf ] || { echo "no .devq: carry it"; return 1; }
  # the texts where the report looks for them (../shared/data beside the checkout)
  mkdir -p ../shared/data/austen && cp .devq/data/brown.txt ../shared/data/ &&
    cp .devq/data/austen/pride_and_prejudice.txt ../shared/data/austen/ || return 1
  # copies outside the carried folder: a later call that does not carry .devq finds them still
  mkdir -p build/cpu/bin build/llama.cpp && cp -a .devq/bin/. build/cpu/bin/ && cp -r .devq/llama/. build/llama.cpp/ &&
    rm -rf "$Q/site" && cp -r .devq/site "$Q/site" || return 1
  build/cpu/bin/llama-quantize --help > /dev/null 2>&1; local rc=$?
  [ $rc -eq 0 ] || [ $rc -eq 1 ] || { echo "the carried CPU build does not run here (exit $rc)"; return 1; }
  "$PY" -c "import sys; sys.path.insert(0, '$Q/site'); import gguf, importlib.metadata as m; print('gguf', m.version('gguf'))"
  nproc; free -g | head -2; df -h . /tmp | tail -2; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
}

stage_piece() {
  local d
  for d in .devq-p*; do
    [ -d "$d" ] || continue
    mv "$d"/part* "$Q/parts/" && stamp "have $(ls "$Q/parts" | wc -l) pieces ($(du -sh "$Q/parts" | cut -f1))"
  done
}

stage_join() {
  mkdir -p "$MODELS"
  cat "$Q"/parts/part* > "$Q4.tmp" || return 1
  local want got
  want=$(cat .devq/sha256); got=$(sha256sum "$Q4.tmp" | cut -d' ' -f1)
  [ "$want" = "$got" ] || { echo "assembled model: sha256 $got, expected $want ($(stat -c %s "$Q4.tmp") bytes)"; return 1; }
  mv "$Q4.tmp" "$Q4" && rm -rf "$Q/parts"
  stamp "Q4_K_M assembled; F16 by llama-quantize"
  build/cpu/bin/llama-quantize --allow-requantize "$Q4" "$F16.tmp" F16 "$(nproc)" > "$Q/f16.log" 2>&1 &&
    mv "$F16.tmp" "$F16" || { tail -5 "$Q/f16.log"; return 1; }
  stamp "F16 $(stat -c %s "$F16") bytes"
}

stage_start() {
  mkdir -p "$Q/results$RUN" build/report/qwen2.5-coder-1.5b
  if [ -n "$RUN" ]; then cp "$Q/results/qwen2.5-coder-1.5b.json" "$Q/results$RUN/"; else cp .devq/qwen2.5-coder-1.5b.json "$Q/results/"; fi
  cp .devq/plan-*.json build/report/qwen2.5-coder-1.5b/ 2>/dev/null && stamp "the measured plan is carried"
  export PYTHONPATH=$Q/site:$PWD
  [ -f .devq/commit ] && export SLIM2GGUF_COMMIT=$(cat .devq/commit)
  if [ -z "$JOBS" ]; then
    local free_gb; free_gb=$(df -BG --output=avail . | tail -1 | tr -dc 0-9)
    JOBS=$(( (free_gb - 12) / 3 )); [ "$JOBS" -gt 6 ] && JOBS=6; [ "$JOBS" -lt 1 ] && JOBS=1
    stamp "$free_gb GB free: $JOBS conversions at a time after the first"
  fi
  setsid nohup "$PY" scripts/report.py --model qwen --out "$Q/results$RUN" --bin build/cpu/bin \
    --chunks 16 --imatrix-chunks 16 --threads "$(nproc)" --bits 2 --variants $VARIANTS --keep-rows \
    --stock-types IQ2_XXS IQ2_XS Q2_K IQ2_S IQ2_M Q3_K_S Q4_0 IQ2_XXS:Q8_0 \
    --match $MATCH --fisher-samples 4 --jobs "$JOBS" \
    --row-note "converted on the H200 (torch $("$PY" -c 'import torch; print(torch.__version__)'), CUDA), measured there by the carried CPU llama-perplexity" \
    > "$Q/report$RUN.log" 2>&1 < /dev/null &
  echo $! > "$Q/report$RUN.pid"
  stamp "report$RUN started (pid $(cat "$Q/report$RUN.pid"))"
}

stage_cudabuild() {
  # the CUDA build (scripts/device_cuda.sh, ~5 min) beside the conversions, for stage cuda
  [ -f .devcarry/llama-src.tar.xz ] || { echo "no .devcarry/llama-src.tar.xz: run scripts/device_pack.sh, carry .devcarry"; return 1; }
  # from a copy of the tree: the next call, which carries other folders, removes .devcarry here
  rm -rf "$Q/tree" && mkdir -p "$Q/tree" &&
    tar -c --exclude=./build --exclude='./.devq*' --exclude=./.cache --exclude=./.git . | tar -x -C "$Q/tree" || return 1
  OUT=$Q/cudaout setsid nohup nice -n 5 bash "$Q/tree/scripts/device_cuda.sh" build > "$Q/cudabuild.log" 2>&1 < /dev/null &
  stamp "CUDA build started"
}

stage_cuda() {
  # the mixed (--target-bpw) files on the GPU: perplexity as on the CPU, and one llama-bench run against an
  # all-SLIM2 file and llama.cpp's Q4_0 / Q2_K of the same model
  local bin=/tmp/slimdev/build/bin w=build/report/qwen2.5-coder-1.5b f files=()
  [ -x "$bin/llama-bench" ] || { tail -5 "$Q/cudabuild.log"; echo "no CUDA build yet"; return 1; }
  for t in Q4_0 Q2_K; do
    [ -f "$Q/$t.gguf" ] || "$bin/llama-quantize" "$F16" "$Q/$t.gguf" "$t" "$(nproc)" > /dev/null 2>&1
  done
  for f in "$w"/slim-at-iq2-xs-*.gguf "$w"/slim-at-q2-k-*.gguf; do
    [ -f "$f" ] || continue
    stamp "$(basename "$f"): perplexity on the GPU"
    "$bin/llama-perplexity" -m "$f" -f ../shared/data/austen/pride_and_prejudice.txt -c 512 --chunks 16 -b 512 \
      -ngl 99 2>&1 | grep -a "Final estimate" | tee -a "$OUT/cuda.log"
  done
  # the mixed file against all-SLIM2 files (every tensor but embd/output SLIM2) and llama.cpp's types
  for f in "$w"/slim-at-iq2-xs-*.gguf "$w"/slim-2-bit-all-levers.gguf "$w"/slim-2-bit-act-order.gguf "$Q/Q4_0.gguf" "$Q/Q2_K.gguf"; do
    [ -f "$f" ] && files+=(-m "$f")
  done
  stamp "llama-bench ${files[*]}"
  "$bin/llama-bench" "${files[@]}" -ngl 99 -p 512 -n 128 -r 3 2>&1 | tee -a "$OUT/cuda.log" | grep -a "|"
}

collect() {
  cp "$Q"/results/qwen2.5-coder-1.5b.{md,json,png} "$OUT/" 2>/dev/null
  [ -f "$Q/results2/qwen2.5-coder-1.5b.json" ] && cp "$Q/results2/qwen2.5-coder-1.5b.json" "$OUT/qwen2.5-coder-1.5b.run2.json"
  cp "$Q"/report*.log "$OUT/" 2>/dev/null
  tar -C build/report/qwen2.5-coder-1.5b -cJf "$OUT/logs.tar.xz" logs $(cd build/report/qwen2.5-coder-1.5b && ls plan-*.json 2>/dev/null) 2>/dev/null
}

stage_wait() {
  local limit=${1:-540} t0=$SECONDS pid
  pid=$(cat "$Q"/report*.pid)
  while [ $((SECONDS - t0)) -lt "$limit" ] && for p in $pid; do kill -0 "$p" 2>/dev/null && break; done; do sleep 10; done
  grep -a "^\[report\]" "$Q"/report*.log | grep -v kept | tail -12
  tail -c 1500 "$Q/report.log" | tr '\r' '\n' | tail -6
  ls -la build/report/qwen2.5-coder-1.5b/ | grep -v "^total"
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null; df -h . | tail -1
  for p in $pid; do kill -0 "$p" 2>/dev/null && echo "report $p still running" || echo "report $p ended"; done
  collect
}

for stage in "$@"; do
  case "$stage" in
    pack|setup|piece|join|start|cudabuild|cuda) "stage_$stage" || { echo "stage $stage failed"; exit 1; } ;;
    wait) shift_next=1 ;;
    [0-9]*) [ "${shift_next:-0}" = 1 ] && { stage_wait "$stage"; shift_next=0; } ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
[ "${shift_next:-0}" = 1 ] && stage_wait 540
exit 0
