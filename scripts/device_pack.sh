#!/usr/bin/env bash
# Pack what the GPU machine needs (it reaches no package registry, and the 77 MB sdist is too big to carry):
# the buildable subset of the PATCHED llama.cpp tree (ggml_patch/ applied), its gguf-py and the LLaMA SPM vocab,
# as .devcarry/llama-src.tar.xz (~5 MB). Carry `.devcarry` with the device call; scripts/device_cuda.sh unpacks it.
#   bash scripts/device_pack.sh            (refreshes build/llama.cpp from ggml_patch/ first)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -m slim2gguf.llama_build --gguf-py-only >/dev/null   # prepare_source(): build/llama.cpp = pristine + ggml_patch
src=build/llama.cpp
mkdir -p .devcarry
grep -qx '/.devcarry/' .git/info/exclude 2>/dev/null || { mkdir -p "$(git rev-parse --git-path info)"; echo '/.devcarry/' >> "$(git rev-parse --git-path info/exclude)"; }

list=$(mktemp)
(
  cd "$src"
  for p in CMakeLists.txt LICENSE cmake include src common vendor licenses gguf-py models/ggml-vocab-llama-spm.gguf \
           ggml/CMakeLists.txt ggml/cmake ggml/include ggml/src/CMakeLists.txt ggml/src/ggml-cpu ggml/src/ggml-cuda; do
    echo "$p"
  done
  find ggml/src -maxdepth 1 -type f \( -name '*.c' -o -name '*.cpp' -o -name '*.h' -o -name '*.in' \)
  find tests -type f \( -name '*.cpp' -o -name '*.c' -o -name '*.h' -o -name '*.txt' -o -name '*.cmake' \) -size -2M
  find tools -type f ! -path 'tools/ui/*' ! -path 'tools/server/public*' ! -path 'tools/server/webui*' -size -2M
  echo tools/ui/CMakeLists.txt
  find tools/ui -maxdepth 1 -type f \( -name '*.in' -o -name '*.cmake' \)
  [ -f scripts/ui-assets.cmake ] && echo scripts/ui-assets.cmake
  find scripts -maxdepth 1 -name '*.cmake'
) | sort -u > "$list"
# llama-cpp-python's Python package (from the same sdist) and its one missing dependency, for GPU-side tests
pysrc=build/pysrc
rm -rf "$pysrc" && mkdir -p "$pysrc"
cp -r "$("$PY" -c 'from slim2gguf.llama_build import pristine_tree; print(pristine_tree())')/llama_cpp" "$pysrc/"
"$PY" -m pip download -q --no-deps --only-binary=:all: -d .cache/wheels diskcache==5.6.3
"$PY" -m zipfile -e .cache/wheels/diskcache-5.6.3-py3-none-any.whl "$pysrc/"
tar -C "$src" -cf .devcarry/llama-src.tar --exclude='__pycache__' -T "$list"
tar -C build -rf .devcarry/llama-src.tar --exclude='__pycache__' pysrc   # unpacks as <tree>/pysrc
xz -f .devcarry/llama-src.tar
cp ../shared/data/brown.txt .devcarry/   # llama-imatrix's text for bench_gpu.py's IQ2_XS / IQ2_S files
rm -f "$list"
ls -la .devcarry/
