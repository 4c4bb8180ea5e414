#!/usr/bin/env bash
# Build the CUDA tools HERE (nvcc 13, sm_90a) and pack them for the GPU machine, so that a device session starts with
# tools instead of spending ~5 of its minutes on the CUDA build. scripts/device_cuda.sh's build stage uses the pack
# only when it was built from the same patched source as the carried llama-src.tar.xz (a key over the tarball's file
# contents) and its test-backend-ops runs an op on the GPU there; otherwise it builds as before.
#
#   bash scripts/device_prebuild.sh     (18 min on 2 cores from scratch; ninja rebuilds only what changed)
#   -> .devcarry/llama-src.tar.xz (device_pack.sh) and .devcarry/prebuilt.tar.xz
#
# Needs nvcc 13 (the GPU machine's). What this machine's toolkit lacks for linking is added to it (root, or write
# access to the toolkit): cuBLAS's headers and libcublas*.so.13 from the nvidia-cublas wheel (pip download, cached in
# .cache/), and a link-time libcuda.so.1 in lib/stubs/: a stub exporting the driver functions ggml-cuda calls (the
# GPU machine loads its real driver; the executables reach it through libggml-cuda, found by -rpath-link). The CPU code is built for AVX2/FMA/F16C/BMI2
# instead of -march=native: this machine's CPU is not the GPU machine's.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
B=build/cuda-pre
source scripts/device_lib.sh   # CUDA_TOOL_TARGETS

command -v nvcc > /dev/null || { echo "no nvcc on PATH"; exit 1; }
CUDA_ROOT=$(readlink -f "${CUDA_HOME:-/usr/local/cuda}")
TLIB=$CUDA_ROOT/targets/x86_64-linux/lib
TINC=$CUDA_ROOT/targets/x86_64-linux/include
STUBS=$TLIB/stubs
bash scripts/device_pack.sh > /dev/null

if [ ! -e "$TINC/cublas_v2.h" ] || [ ! -e "$TLIB/libcublas.so" ]; then
  echo "adding cuBLAS (nvidia-cublas 13 wheel) to $CUDA_ROOT"
  "$PY" -m pip download -q --no-deps --only-binary=:all: -d .cache/wheels "nvidia-cublas>=13,<14"
  whl=$(ls -t .cache/wheels/nvidia_cublas-13*.whl | head -1)
  rm -rf .cache/cublas && "$PY" -m zipfile -e "$whl" .cache/cublas
  for f in "$PWD"/.cache/cublas/nvidia/cu13/include/*.h; do ln -sf "$f" "$TINC/"; done
  for f in libcublas.so.13 libcublasLt.so.13; do ln -sf "$PWD/.cache/cublas/nvidia/cu13/lib/$f" "$TLIB/$f"; done
  ln -sf libcublas.so.13 "$TLIB/libcublas.so"
  ln -sf libcublasLt.so.13 "$TLIB/libcublasLt.so"
fi
if [ ! -e "$STUBS/libcuda.so.1" ]; then
  echo "adding a link-time libcuda stub to $STUBS"
  mkdir -p "$STUBS" build
  # every driver-API function ggml-cuda calls (cuXxx(...), not cudaXxx or cuBLAS)
  grep -ohE "\bcu[A-Z][A-Za-z0-9_]*\(" build/llama.cpp/ggml/src/ggml-cuda/*.cu build/llama.cpp/ggml/src/ggml-cuda/*.cuh \
    | tr -d '(' | grep -v '^cuBLAS$' | sort -u | sed 's/.*/int &(void) { return 999; }/' > build/libcuda-stub.c
  cc -shared -fPIC -o "$STUBS/libcuda.so" -Wl,-soname,libcuda.so.1 build/libcuda-stub.c
  ln -sf libcuda.so "$STUBS/libcuda.so.1"
fi
mapfile -t argv < <("$PY" -c "from slim2gguf.llama_build import cmake_args; print('\n'.join(cmake_args(True)))")
argv+=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON)
# executables reach libcuda.so.1 only through libggml-cuda: the linker finds the stub by -rpath-link
argv+=("-DCMAKE_EXE_LINKER_FLAGS=-Wl,-rpath-link,$STUBS")
if [ ! -f "$B/build.ninja" ] || [ "$(cat "$B/args.txt" 2>/dev/null)" != "${argv[*]}" ]; then
  cmake -S build/llama.cpp -B "$B" "${argv[@]}" > "$B.cmake.log" 2>&1 \
    || { tail -30 "$B.cmake.log"; echo "cmake failed (cuBLAS and a libcuda.so stub in the toolkit? see the header)"; exit 1; }
  echo "${argv[*]}" > "$B/args.txt"
fi
cmake --build "$B" -j "$(nproc)" --target "${CUDA_TOOL_TARGETS[@]}"

key=$(bash scripts/device_prebuilt_key.sh .devcarry/llama-src.tar.xz)
stage=$(mktemp -d)
mkdir -p "$stage/bin"
for t in "${CUDA_TOOL_TARGETS[@]}"; do cp "$B/bin/$t" "$stage/bin/"; done
cp -P "$B"/bin/lib*.so* "$stage/bin/"
echo "$key" > "$stage/bin/prebuilt.key"
tar -C "$stage" -cJf .devcarry/prebuilt.tar.xz bin
rm -rf "$stage"
ls -la .devcarry/
echo "prebuilt key $key"
