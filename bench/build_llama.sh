#!/usr/bin/env bash
# Builds llama.cpp's llama-bench once into bench/.llama (from the llama-cpp-python source package on
# PyPI, cmake from PyPI; a few minutes on 2 cores), for bench/cpu.sh and bench/busy.sh.
# LLAMA_AVX2_ONLY=1 builds it without AVX-512 (into bench/.llama/build-avx2), for AVX2 figures on
# an AVX-512 machine. Prints the path of llama-bench.
#
#   bash bench/build_llama.sh [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA=bench/.llama
BUILD=$LLAMA/build
FLAGS=(-DGGML_NATIVE=ON)
if [ -n "${LLAMA_AVX2_ONLY:-}" ]; then
  BUILD=$LLAMA/build-avx2
  FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF)
fi
if [ ! -x $BUILD/bin/llama-bench ]; then
  mkdir -p $LLAMA
  [ -x $LLAMA/venv/bin/cmake ] || { python3 -m venv $LLAMA/venv && $LLAMA/venv/bin/pip install -q cmake; }
  [ -f $LLAMA/llama_cpp_python-0.3.16.tar.gz ] ||
    $LLAMA/venv/bin/pip download -q --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.16 -d $LLAMA
  [ -d $LLAMA/llama_cpp_python-0.3.16 ] || tar xzf $LLAMA/llama_cpp_python-0.3.16.tar.gz -C $LLAMA
  $LLAMA/venv/bin/cmake -S $LLAMA/llama_cpp_python-0.3.16/vendor/llama.cpp -B $BUILD "${FLAGS[@]}" \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DCMAKE_BUILD_TYPE=Release >$BUILD.cmake.log
  $LLAMA/venv/bin/cmake --build $BUILD --target llama-bench -j"${1:-2}" >$BUILD.build.log
fi
echo $BUILD/bin/llama-bench
