#!/usr/bin/env bash
# On the GPU machine (device tool): build the patched llama.cpp with CUDA from the carried source, check the SLIM
# kernels, benchmark. Stages run in the order given; each leaves its log under $OUT (at most 8 files come back).
#
#   here:    bash scripts/device_pack.sh                      -> .devcarry/llama-src.tar.xz (patched tree, ~5 MB)
#            (optional) bash scripts/device_prebuild.sh          -> also .devcarry/prebuilt.tar.xz: the build stage
#            then only checks that these tools run there (stage_prebuilt) instead of spending ~5 min building
#            (optional) SmolLM2 SLIM files + eval text in .devcarry/smol/ (carry limit 64 MiB per call; a later
#            call on the still-warm machine can carry another folder: SMOL_DIR=.devcarry3/smol ... smol)
#   device:  bash scripts/device_cuda.sh build check          (carry .devcarry)   ~6 min
#            bash scripts/device_cuda.sh smol                 (carry .devcarry)   GPU vs CPU perplexity, generation
#            bash scripts/device_cuda.sh models bench         (machine still warm: the build is reused)
#
# build:  cmake with slim2gguf.llama_build.cmake_args(cuda=True) (-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a
#         -DGGML_CUDA_FA_QUANTS=f16-f16; SLIM2GGUF_CUDA_ARCH overrides), only the targets needed, -j$(nproc)
# exact:  the Numba exactness harness alone (the second half of check)
# check:  test-backend-ops -b CUDA0 -o MUL_MAT,GET_ROWS,MUL_MAT_VEC_FUSION,SLIM_NORM_CHAIN -p slim; scripts/cuda_slim_check.cpp on Numba-decoded
#         cases (CUDA == Numba == CPU bit for bit, mat-vec within Q8 rounding)
# smol:   for each .devcarry/smol/*.gguf: llama-perplexity on GPU (-ngl 99) and CPU (no GPU visible), greedy
#         generation on both
# shapes: scripts/shape_sweep.py: a 4-layer SLIM model per common open model's shape (one SLIM type per layer),
#         a few greedy tokens with llama-completion (fusion on, off) and llama-cpp-python; fails on any abort
# untrusted: scripts/gpu_untrusted.py (after models): load time and the loader's SLIM check on the 7B SLIM2 file;
#         corrupted copies of a small SLIM file refused by llama-completion -ngl 99 (mmap and -lm none)
# models: scripts/bench_gpu.py make (F16, Q4_0, Q3_K_S, Q2_K, IQ2_XS and IQ2_S with an imatrix, SLIM2/3 g128 of one random LLaMA-7B)
# bench:  scripts/bench_gpu.py bench (one llama-bench run; BENCH_TUNE=1: also its fusion on/off runs)
# reversed: the same files in reverse order (the order check alone)
# layers: scripts/bench_gpu.py layers: the bench files cut to 1/8/16/32 layers in one tg128 run -> per-token fixed
#         time and per-layer time per type (LAYERS_TYPES, default q4_0,slim2,slim3): what the layer kernels must reach
# clocks: tg128 alone vs after pp512, with SM clock samples
# mixed:  issue 13: --target-bpw files (MIXED_DIR, one folder per call, kept between calls): GPU/CPU perplexity,
#         greedy text, then one llama-bench run over every file carried so far
# order:  the bench run's files in reverse order (bench_gpu.py bench --reverse); SLIM2 with CUDA graphs off
# profile: ncu of the decode mat-vec kernels: Q4_0 (mmvq) and SLIM2/SLIM3 under each SLIM_SETTINGS entry
# stalls: ncu's warp-state (stall reasons), occupancy and memory sections of one layer's decode mat-vecs
# tune:   tg128 of SLIM2 / SLIM3 (TUNE_FILES) under each SLIM_SETTINGS entry, settings alternating in separate llama-bench
#         processes, TUNE_ROUNDS rounds (default 3); nothing else may run meanwhile (a background llama-quantize
#         moved these numbers by 10 %)
# quiet:  wait until the process in QUIET_PID's file has ended (another job's timing-sensitive neighbour)
# models_bg / models_wait: IQ2_XS with an imatrix (minutes of CPU) made in the background while other stages run
#
# --detach STAGES...: run the stages in a process that outlives this call (logs under $W/run/out); a later call's
# --wait SECONDS waits for it (at most that long) and brings its logs back as one tarball. The device call limit is
# 10 minutes; a detached pipeline may take longer while back-to-back --wait calls keep the machine warm.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/slim-out}
W=${SLIM_DEV_WORK:-/tmp/slimdev}
SRC=$W/src
B=$W/build
BIN=$B/bin
mkdir -p "$OUT" "$W"
export PYTHONUNBUFFERED=1
export PYTHONPATH=$SRC/gguf-py:$PWD${PYTHONPATH:+:$PYTHONPATH}
NJ=$(nproc)
source scripts/device_lib.sh   # detach, wait_detached
t_start=$(date +%s)
stamp() { echo "[$(date +%H:%M:%S) +$(( $(date +%s) - t_start ))s] $*"; }

stage_build() {
  local tb=.devcarry/llama-src.tar.xz sum
  [ -f "$tb" ] || { echo "no $tb: run scripts/device_pack.sh and carry .devcarry"; return 1; }
  sum=$(sha256sum "$tb" | cut -c1-16)
  if [ "$(cat "$W/src.sum" 2>/dev/null)" != "$sum" ]; then
    # unpack into a scratch dir and copy changed files only, so unchanged files keep their mtimes (incremental builds)
    rm -rf "$W/src.new" && mkdir -p "$W/src.new" && tar -xJf "$tb" -C "$W/src.new"
    python3 - "$W/src.new" "$SRC" <<'PY' || return 1
import filecmp, shutil, sys
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for p in src.rglob("*"):
    t = dst / p.relative_to(src)
    if p.is_dir():
        t.mkdir(parents=True, exist_ok=True)
    elif not (t.exists() and filecmp.cmp(p, t, shallow=False)):
        t.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, t)
PY
    rm -rf "$W/src.new"
    echo "$sum" > "$W/src.sum"
  fi
  if ! stage_prebuilt; then
    local args argv=()
    args=$(python3 -c "from slim2gguf.llama_build import cmake_args; print('\n'.join(cmake_args(True)))") || return 1
    mapfile -t argv <<< "$args"   # one argument per line: flags with spaces stay one argument
    stamp "cmake ${argv[*]}"
    if [ ! -f "$B/build.ninja" ] || [ "$(cat "$B/args.txt" 2>/dev/null)" != "$args" ]; then
      cmake -S "$SRC" -B "$B" "${argv[@]}" -DGGML_CCACHE=OFF > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; return 1; }
      echo "$args" > "$B/args.txt"
    fi
    stamp "building (-j$NJ)"
    cmake --build "$B" -j "$NJ" --target "${CUDA_TOOL_TARGETS[@]}" \
      >> "$OUT/build.log" 2>&1 || { grep -B2 -A12 "error" "$OUT/build.log" | head -80; return 1; }
    stamp "build done"
  fi
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
}

# .devcarry/prebuilt.tar.xz (scripts/device_prebuild.sh: the tools built on the dev machine) instead of a build, if it
# was made from this llama-src.tar.xz and its test-backend-ops runs an op on the GPU here; status 1 otherwise (build)
stage_prebuilt() {
  local pb=.devcarry/prebuilt.tar.xz key have lib libdir
  [ -f "$pb" ] || return 1
  key=$(bash scripts/device_prebuilt_key.sh .devcarry/llama-src.tar.xz)
  have=$(tar -xJOf "$pb" bin/prebuilt.key 2>/dev/null || true)
  if [ "$key" != "$have" ]; then
    stamp "prebuilt tools are for other source (key $have, source $key): building"
    return 1
  fi
  mkdir -p "$B" && tar -xJf "$pb" -C "$B"
  for lib in $(ldd "$BIN/test-backend-ops" | awk '/not found/ {print $1}'); do # CUDA's libraries elsewhere here
    libdir=$(find /usr /opt /lib /lib64 -name "$lib" 2>/dev/null | head -1)
    [ -n "$libdir" ] && export LD_LIBRARY_PATH="$(dirname "$libdir")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  done
  # the exit status alone is no proof: without a usable GPU test-backend-ops skips CUDA0 and exits 0
  if timeout 120 "$BIN/test-backend-ops" -b CUDA0 -o ADD > "$OUT/prebuilt-check.log" 2>&1 &&
     grep -q "^Backend .*: CUDA0" "$OUT/prebuilt-check.log" &&
     grep -Eq "^ +[1-9][0-9]*/[0-9]+ tests passed" "$OUT/prebuilt-check.log"; then
    stamp "prebuilt tools in use (key $key)${LD_LIBRARY_PATH:+, LD_LIBRARY_PATH=$LD_LIBRARY_PATH}"
    rm -f "$B/args.txt"   # a later build stage on this machine configures and builds from source
    return 0
  fi
  stamp "prebuilt tools do not run here (log: prebuilt-check.log): building"
  tail -5 "$OUT/prebuilt-check.log"
  rm -rf "$BIN"
  return 1
}

# SLIM decode-kernel settings the check, profile and tune stages go through (env assignments; "" = defaults),
# '|'-separated in SLIM_SETTINGS to override (SLIM_SETTINGS='|' for the defaults alone); CHECK_SETTINGS,
# PROFILE_SETTINGS and TUNE_SETTINGS override it for one stage. Default: the kernels' defaults (the mat-vec's bulk-copy
# path where rows are 16-byte aligned) and the lean cp.async path everywhere (GGML_CUDA_SLIM_BULK=0,
# docs/bench/2026-12-04-h200-expand-bulk.md); experiments: GGML_CUDA_SLIM_TABLE_EARLY=1, GGML_CUDA_SLIM_BALANCE=1
# (=4: its 4-row path always, for check); other knobs: GGML_CUDA_SLIM_STAGES=1/2 (tiles in flight),
# GGML_CUDA_SLIM_FUSE_NORM=0, GGML_CUDA_SLIM_FUSE_ADD=0 (docs/bench/2026-12-04-h200-*.md)
SLIM_SETTINGS=${SLIM_SETTINGS:-|GGML_CUDA_SLIM_BULK=0}
settings() { # settings "STRING": the '|'-separated entries into SLIM_SET
  IFS="|" read -r -a SLIM_SET <<< "$1"
  [ "${#SLIM_SET[@]}" -gt 0 ] || SLIM_SET=("")
}

stage_check() {
  local rc=0 e
  settings "${CHECK_SETTINGS:-$SLIM_SETTINGS}"
  : > "$OUT/check.log"
  for e in "${SLIM_SET[@]}"; do
    stamp "test-backend-ops (CUDA0 vs CPU, SLIM cases) ${e:-defaults}"
    echo "=== ${e:-defaults}" >> "$OUT/check.log"
    env $e "$BIN/test-backend-ops" -b CUDA0 -o MUL_MAT,GET_ROWS,MUL_MAT_VEC_FUSION,SLIM_NORM_CHAIN -p slim \
      > "$W/tbo.log" 2>&1 || rc=1
    cat "$W/tbo.log" >> "$OUT/check.log"
    grep -E "tests passed|FAIL|not supported" "$W/tbo.log" | sort | uniq -c | head -20
    tail -2 "$W/tbo.log"
  done
  stage_exact || rc=1
  return $rc
}

stage_exact() { # the Numba exactness harness alone (check runs it after test-backend-ops)
  local rc=0
  stamp "exactness cases (Numba) + harness"
  python3 scripts/cuda_slim_cases.py "$W/cases" >> "$OUT/check.log" 2>&1 || { tail "$OUT/check.log"; return 1; }
  g++ -O2 -std=c++17 scripts/cuda_slim_check.cpp -I"$SRC/ggml/include" -L"$BIN" -Wl,-rpath,"$BIN" \
    -lggml -lggml-base -lggml-cpu -lggml-cuda -o "$W/cuda_slim_check" >> "$OUT/check.log" 2>&1 || { tail "$OUT/check.log"; return 1; }
  local e
  settings "${CHECK_SETTINGS:-$SLIM_SETTINGS}"
  : > "$OUT/exact.log"
  for e in "${SLIM_SET[@]}"; do # the mat-vec cases under each kernel setting
    echo "=== ${e:-defaults}" | tee -a "$OUT/exact.log"
    env $e "$W/cuda_slim_check" "$W"/cases/*.bin > "$W/exact.log" 2>&1 || rc=1
    cat "$W/exact.log" >> "$OUT/exact.log"
    grep -c " ok " "$W/exact.log"; grep "FAIL" "$W/exact.log" | head -20; tail -1 "$W/exact.log"
  done
  return $rc
}

stage_smol() {
  stage_smol_files "${SMOL_DIR:-.devcarry/smol}"/*.gguf
}

stage_smol_files() {
  local txt f chunks=${SMOL_CHUNKS:-40} dir=${SMOL_DIR:-.devcarry/smol}
  txt=$(ls "$dir"/*.txt 2>/dev/null | head -1)
  [ -n "$txt" ] || { echo "no eval text in $dir"; return 1; }
  for f in "$@"; do
    [ -f "$f" ] || { echo "no SmolLM2 files in $dir"; return 1; }
    local n; n=$(basename "$f" .gguf)
    stamp "$n: perplexity GPU"
    "$BIN/llama-perplexity" -m "$f" -f "$txt" -c 512 --chunks "$chunks" -ngl 99 > "$OUT/smol_$n.log" 2>&1
    stamp "$n: perplexity CPU"
    CUDA_VISIBLE_DEVICES= "$BIN/llama-perplexity" -m "$f" -f "$txt" -c 512 --chunks "$chunks" -t "$NJ" \
      > "$OUT/smol_${n}_cpu.log" 2>&1
    grep -h "offloaded\|Final estimate" "$OUT/smol_$n.log" "$OUT/smol_${n}_cpu.log"
    local prompt="The capital of France is"
    stamp "$n: greedy generation, GPU then CPU (the same text expected)"
    "$BIN/llama-completion" -m "$f" -p "$prompt" -n 48 -ngl 99 --temp 0 -no-cnv 2>/dev/null > "$W/gen_gpu.txt"
    CUDA_VISIBLE_DEVICES= "$BIN/llama-completion" -m "$f" -p "$prompt" -n 48 -t "$NJ" --temp 0 -no-cnv 2>/dev/null \
      > "$W/gen_cpu.txt"
    { echo "GPU: $(tr '\n' ' ' < "$W/gen_gpu.txt")"; echo "CPU: $(tr '\n' ' ' < "$W/gen_cpu.txt")"; } | tee -a "$OUT/smol_$n.log"
    cmp -s "$W/gen_gpu.txt" "$W/gen_cpu.txt" && echo "same text on GPU and CPU" || echo "GPU and CPU texts differ"
    echo
  done
}

stage_mixed() {
  # issue 13: whole-file-budget (--target-bpw) files, SLIM mixed with stock types, on the GPU. Each call carries
  # one folder (MIXED_DIR) of files + the eval text; they are kept in $W/mixed, so a later call adds files and
  # the llama-bench run covers all of them: the mixed file against files of the same tensors in SLIM.
  local dir=${MIXED_DIR:-.devmix} f n
  mkdir -p "$W/mixed" && cp "$dir"/* "$W/mixed/" || return 1
  SMOL_DIR=$W/mixed SMOL_CHUNKS=${SMOL_CHUNKS:-16} stage_smol_files "$dir"/*.gguf || return 1
  local files=()
  for f in "$W"/mixed/*.gguf; do files+=(-m "$f"); done
  stamp "llama-bench: ${files[*]}"
  "$BIN/llama-bench" "${files[@]}" -ngl 99 -p 512 -n 128 -r 3 2>&1 | tee "$OUT/mixed_bench.log" | grep -a "|"
}

stage_shapes() {
  stamp "shape sweep: models"
  python3 scripts/shape_sweep.py make --vocab "$SRC/models/ggml-vocab-llama-spm.gguf" --dir "$W/shapes" \
    > "$OUT/shapes_make.log" 2>&1 || { tail "$OUT/shapes_make.log"; return 1; }
  stamp "shape sweep: decode"
  python3 scripts/shape_sweep.py run --bin "$BIN" --dir "$W/shapes" --out "$OUT" --pysrc "$SRC/pysrc" 2>&1 \
    | tee "$OUT/shapes.log"
  local rc=${PIPESTATUS[0]}
  rm -rf "$W/shapes"
  return "$rc"
}

stage_untrusted() {
  stamp "untrusted files"
  python3 scripts/shape_sweep.py make --vocab "$SRC/models/ggml-vocab-llama-spm.gguf" --dir "$W/small" \
    --only SmolLM2-135M > /dev/null || return 1
  python3 scripts/gpu_untrusted.py --bin "$BIN" --big "$W/models/llama7b-slim2.gguf" \
    --small "$W/small/SmolLM2-135M.gguf" --out "$OUT" 2>&1 | tee "$OUT/untrusted.log"
  return "${PIPESTATUS[0]}"
}

stage_models() {
  stamp "models ${MODEL_TYPES:-all}"
  # IQ2_XS / IQ2_S with an imatrix over brown.txt (device_pack.sh carries it), as a user would make them
  local imat=() types=()
  [ -f .devcarry/brown.txt ] && imat=(--imatrix-text .devcarry/brown.txt)
  [ -n "${MODEL_TYPES:-}" ] && types=(--types "$MODEL_TYPES")
  python3 scripts/bench_gpu.py make --bin "$BIN" --vocab "$SRC/models/ggml-vocab-llama-spm.gguf" --dir "$W/models" \
    "${imat[@]}" "${types[@]}" 2>&1 | grep -v "converting to\|^\[ *[0-9]*/" | tee -a "$OUT/models.log"
  df -h "$W" | tail -1
}

stage_models_bg() { # IQ2_XS (BG_TYPES) in the background: the lattice search takes minutes of CPU, not the GPU
  mkdir -p "$W/models_bg"
  printf 'cd %s && MODEL_TYPES=%s OUT=%s bash scripts/device_cuda.sh models\n' "$PWD" "${BG_TYPES:-IQ2_XS}" \
    "$W/models_bg" > "$W/models_bg/run.sh"
  detach "$W/models_bg"
  stamp "models in the background: ${BG_TYPES:-IQ2_XS}"
}

stage_models_wait() {
  [ -f "$W/models_bg/run.pid" ] || return 0
  wait_detached "$W/models_bg" "${BG_LIMIT:-900}" || { stamp "background models still running"; return 1; }
  cat "$W/models_bg/models.log" >> "$OUT/models.log"; tail -4 "$W/models_bg/models.log"
}

stage_bench() {
  stamp "bench"
  python3 scripts/bench_gpu.py bench --bin "$BIN" --dir "$W/models" --out "$OUT" ${BENCH_TUNE:+--tune} \
    ${BENCH_SKIP:+--skip "$BENCH_SKIP"} 2>&1 \
    | tee "$OUT/bench.log"
  stamp "bench done"
}

stage_layers() {
  stamp "layers"
  python3 scripts/bench_gpu.py layers --bin "$BIN" --dir "$W/models" --out "$OUT" \
    --types "${LAYERS_TYPES:-q4_0,slim2,slim3}" 2>&1 | tee "$OUT/layers.log"
  stamp "layers done"
}

stage_clocks() {
  # Is a SLIM file's tg128 slower right after its own pp512 (dequantize + cuBLAS at full power) than alone?
  # One llama-bench per line, SM clock / power sampled every 250 ms into clocks.csv.
  local d=$W/models a
  nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv -lms 250 \
    > "$OUT/clocks.csv" 2>/dev/null &
  local smi=$!
  for a in "-m $d/llama7b-slim2.gguf -p 0 -n 128" "-m $d/llama7b-slim2.gguf -p 512 -n 128" \
           "-m $d/llama7b-slim2.gguf -p 512 -n 128 --delay 5" "-m $d/llama7b-q4_0.gguf -p 512 -n 128" \
           "-m $d/llama7b-q4_0.gguf -p 0 -n 128"; do
    stamp "llama-bench $a"
    "$BIN/llama-bench" $a -ngl 99 -r 3 -o md 2>/dev/null | grep -E "pp512|tg128" | tee -a "$OUT/clocks.log"
  done
  kill $smi
}

stage_reversed() { # the bench run's files in reverse order, nothing else
  python3 scripts/bench_gpu.py bench --bin "$BIN" --dir "$W/models" --out "$OUT/reversed" --reverse \
    ${BENCH_SKIP:+--skip "$BENCH_SKIP"} 2>&1 | tee "$OUT/order.log"
}

stage_order() {
  # Does a file's place in the one-run list matter? The bench run's files reversed, SLIM2 with CUDA graphs off
  local d=$W/models
  python3 scripts/bench_gpu.py bench --bin "$BIN" --dir "$d" --out "$OUT/reversed" --reverse 2>&1 | tee "$OUT/order.log"
  stamp "SLIM2 tg128 alone"
  "$BIN/llama-bench" -m "$d/llama7b-slim2.gguf" -p 0 -n 128 -ngl 99 -r 3 -o md 2>/dev/null | grep tg128 \
    | tee -a "$OUT/order.log"
  stamp "SLIM2 tg128, CUDA graphs off"
  GGML_CUDA_DISABLE_GRAPHS=1 "$BIN/llama-bench" -m "$d/llama7b-slim2.gguf" -p 0 -n 128 -ngl 99 -r 3 -o md 2>/dev/null \
    | grep tg128 | tee -a "$OUT/order.log"
}

stage_profile() {
  # decode kernels, 240 launches after the first 500 (all layer matmuls + their activation quantization; -n 16):
  # Q4_0 (mmvq), then SLIM2 and SLIM3 under each SLIM kernel setting
  local m e tag
  settings "${PROFILE_SETTINGS:-$SLIM_SETTINGS}"
  for m in q4_0 slim2 slim3; do
    for e in "${SLIM_SET[@]}"; do
      [ "$m" = q4_0 ] && [ -n "$e" ] && continue
      tag="$m${e:+ $e}"
      stamp "ncu $tag"
      echo "== $tag" >> "$OUT/profile.log"
      env $e timeout 150 ncu --clock-control none -k 'regex:slim_mul_mat_vec|mul_mat_vec_q|slim_quantize|quantize_q8_1|rms_norm' \
        --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__throughput.avg.pct_of_peak_sustained_elapsed,launch__registers_per_thread,sm__warps_active.avg.pct_of_peak_sustained_active \
        --csv --print-units base --launch-skip 500 --launch-count 240 \
        "$BIN/llama-bench" -m "$W/models/llama7b-$m.gguf" -ngl 99 -p 0 -n 16 -r 1 > "$W/ncu.csv" 2> "$W/ncu.err"
      python3 scripts/ncu_summary.py "$W/ncu.csv" | tee -a "$OUT/profile.log"
    done
  done
}

stage_stalls() {
  # why the decode mat-vecs wait: ncu's warp-state (stall reasons), occupancy and memory sections, in text, for the
  # first 8 matching launches after 500 (one layer's mat-vecs) of Q4_0 (mmvq) and SLIM2/SLIM3 (defaults)
  local m
  for m in q4_0 slim2 slim3; do
    stamp "ncu stalls $m"
    timeout 200 ncu --clock-control none -k 'regex:slim_mul_mat_vec|mul_mat_vec_q' --section WarpStateStats \
      --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis --section SchedulerStats \
      --print-details all --launch-skip 500 --launch-count 8 \
      "$BIN/llama-bench" -m "$W/models/llama7b-$m.gguf" -ngl 99 -p 0 -n 16 -r 1 > "$OUT/stalls_$m.log" 2>&1
    grep -E "slim_mul_mat_vec|mul_mat_vec_q|Warp Cycles Per Issued|Stall|stall|Achieved Occupancy|Duration" \
      "$OUT/stalls_$m.log" | head -40
  done
}

stage_quiet() { # wait for another job on this machine to end (QUIET_PID: its pid file, waited for until it exists)
  local t0=$SECONDS limit=${QUIET_LIMIT:-600}
  [ -n "${QUIET_PID:-}" ] || return 0
  stamp "waiting for $QUIET_PID's process to end (at most $limit s)"
  while [ $((SECONDS - t0)) -lt "$limit" ] && { [ ! -f "$QUIET_PID" ] || kill -0 "$(cat "$QUIET_PID")" 2>/dev/null; }; do
    sleep 5
  done
  if [ -f "$QUIET_PID" ] && ! kill -0 "$(cat "$QUIET_PID")" 2>/dev/null; then
    stamp "quiet: $QUIET_PID's process has ended"
  else
    stamp "quiet: gave up after $limit s (the machine may not be quiet: timings after this are suspect)"; return 1
  fi
}

stage_tune() { # TUNE_FILES: the bench files run under each setting (default "slim2 slim3")
  local d=$W/models e i f files=()
  for f in ${TUNE_FILES:-slim2 slim3}; do files+=(-m "$d/llama7b-$f.gguf"); done
  settings "${TUNE_SETTINGS:-$SLIM_SETTINGS}"
  for i in $(seq "${TUNE_ROUNDS:-3}"); do
    for e in "${SLIM_SET[@]}"; do
      env $e "$BIN/llama-bench" "${files[@]}" -ngl 99 -p 0 -n 128 -r 3 -o md \
        2>/dev/null | grep tg128 | sed "s|^|$i ${e:-defaults} |" | tee -a "$OUT/tune.log"
    done
  done
}

if [ "${1:-}" = --detach ]; then
  shift
  rm -rf "$W/run" && mkdir -p "$W/run/out"
  printf 'cd %s && OUT=%s bash scripts/device_cuda.sh %s\n' "$PWD" "$W/run/out" "$*" > "$W/run/run.sh"
  detach "$W/run"
  stamp "detached: $*"
  exit 0
fi
if [ "${1:-}" = --wait ]; then
  wait_detached "$W/run" "${2:-560}"; ended=$?
  tar -C "$W/run" -czf "$OUT/run-out.tar.gz" out run.log
  tail -"${TAIL:-40}" "$W/run/run.log"
  [ $ended = 0 ] && echo "detached run ended" || echo "detached run still running"
  exit 0
fi

failed=""
for s in "$@"; do
  if [ "$s" = build ]; then
    stage_build || { stamp "stage build FAILED"; exit 1; }   # nothing else can run
  else
    "stage_$s" || { stamp "stage $s FAILED"; failed="$failed $s"; }
  fi
done
stamp "all done${failed:+, FAILED:$failed}"
[ -z "$failed" ]
