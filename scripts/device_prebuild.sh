#!/usr/bin/env bash
# Build the CUDA tools HERE (nvcc 13, sm_90a) and pack them for the GPU machine, so that a device session starts with
# tools instead of spending ~5 of its minutes on the CUDA build. scripts/device_cuda.sh's build stage uses the pack
# only when it was built from the same patched source as the carried llama-src.tar.xz (a key over the tarball's file
# contents) and its test-backend-ops runs an op on the GPU there; otherwise it builds as before.
#
#   bash scripts/device_prebuild.sh     (~1-2 h on 2 cores the first time; ninja rebuilds only what changed)
#   -> .devcarry/llama-src.tar.xz (device_pack.sh) and .devcarry/prebuilt.tar.xz
#
# Needs, besides nvcc: cuBLAS (headers and libcublas*.so.13, e.g. from the nvidia-cublas wheel) in the toolkit's
# include/ and lib/, and a link-time libcuda.so + libcuda.so.1 in its lib/stubs/ (CUDA_STUBS; soname libcuda.so.1; a
# stub exporting the driver functions ggml-cuda calls will do, the GPU machine loads its real driver). The CPU code is built for AVX2/FMA/F16C/BMI2
# instead of -march=native: this machine's CPU is not the GPU machine's.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
B=build/cuda-pre
TARGETS=(llama-bench llama-quantize llama-perplexity llama-completion llama-imatrix test-backend-ops)

command -v nvcc > /dev/null || { echo "no nvcc on PATH"; exit 1; }
bash scripts/device_pack.sh > /dev/null
mapfile -t argv < <("$PY" -c "from slim2gguf.llama_build import cmake_args; print('\n'.join(cmake_args(True)))")
argv+=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON)
# executables reach libcuda.so.1 only through libggml-cuda: the linker finds the stub by -rpath-link
STUBS=${CUDA_STUBS:-/usr/local/cuda/targets/x86_64-linux/lib/stubs}
[ -e "$STUBS/libcuda.so.1" ] && argv+=("-DCMAKE_EXE_LINKER_FLAGS=-Wl,-rpath-link,$STUBS")
if [ ! -f "$B/build.ninja" ] || [ "$(cat "$B/args.txt" 2>/dev/null)" != "${argv[*]}" ]; then
  cmake -S build/llama.cpp -B "$B" "${argv[@]}" > "$B.cmake.log" 2>&1 \
    || { tail -30 "$B.cmake.log"; echo "cmake failed (cuBLAS and a libcuda.so stub in the toolkit? see the header)"; exit 1; }
  echo "${argv[*]}" > "$B/args.txt"
fi
cmake --build "$B" -j "$(nproc)" --target "${TARGETS[@]}"

key=$(bash scripts/device_prebuilt_key.sh .devcarry/llama-src.tar.xz)
stage=$(mktemp -d)
mkdir -p "$stage/bin"
for t in "${TARGETS[@]}"; do cp "$B/bin/$t" "$stage/bin/"; done
cp -P "$B"/bin/lib*.so* "$stage/bin/"
echo "$key" > "$stage/bin/prebuilt.key"
tar -C "$stage" -cJf .devcarry/prebuilt.tar.xz bin
rm -rf "$stage"
ls -la .devcarry/
echo "prebuilt key $key"
