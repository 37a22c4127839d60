#!/usr/bin/env bash
# Build llama-cpp-python once, portably, into a wheel folder that outlives the clone.
#
# Why not let pip build it: pip's own build uses -march=native, and on these hosts
# (CPUs with AMX) that build crashes in ggml_backend_amx_mul_mat on the first token.
# A portable AVX2 build runs everywhere this project runs; pip's wheel cache would
# also ignore CMAKE_ARGS, so the wheel is kept in a folder of our own.
set -euo pipefail
PIP=${1:?usage: build_llama_wheel.sh PIP WHEEL_DIR}
WHEEL_DIR=${2:?usage: build_llama_wheel.sh PIP WHEEL_DIR}
VERSION=0.3.36
mkdir -p "$WHEEL_DIR"
if ls "$WHEEL_DIR"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
  echo "llama-cpp-python $VERSION: cached wheel in $WHEEL_DIR"
  exit 0
fi
echo "llama-cpp-python $VERSION: building a portable wheel (about 4 minutes on 2 cores)"
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
  "$PIP" wheel --no-deps --no-cache-dir --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -w "$WHEEL_DIR"
