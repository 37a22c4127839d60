#!/usr/bin/env bash
# Build llama.cpp's C++ `llama-server` once, portably, into a cache folder that outlives the clone.
#
# Why this way: only PyPI/Debian/npm are reachable from our hosts, so the llama.cpp source
# comes from the llama-cpp-python sdist (it vendors llama.cpp, tools/server included) and
# is pinned by sha256. The build is portable AVX2 (GGML_NATIVE=OFF): a -march=native build
# crashes on these hosts' AMX CPUs on the first token (ggml_backend_amx_mul_mat).
# LLAMA_USE_PREBUILT_UI=OFF / LLAMA_BUILD_UI=OFF keep the build from downloading a web UI,
# and LLAMA_OPENSSL=OFF avoids needing libssl headers. BUILD_SHARED_LIBS=OFF gives a single
# self-contained binary that can be moved anywhere.
#
# The binary lands in CACHE_DIR/<first 16 hex of the sdist sha256>/llama-server, next to a
# BUILD_INFO file. Everything is built in a temp dir and renamed into place at the end, so a
# partial build never looks complete. A second run finds the binary and exits at once.
#
# Usage: build_llama_server.sh [CACHE_DIR]
#   CACHE_DIR defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/gemantria/llama-server.
#   Env: PIP (default "python3 -m pip"), JOBS (default 2).
# stdout's last line is "llama-server: <path>" ("llama-server: cached <path>" on a cache hit);
# the path is always its last field. Build logs go to stderr. Takes about 5 minutes on 2 cores.
set -euo pipefail

VERSION=0.3.36
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
CACHE_DIR=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/gemantria/llama-server}
JOBS=${JOBS:-2}
read -r -a PIP_CMD <<<"${PIP:-python3 -m pip}"

KEY=${SDIST_SHA256:0:16}
FINAL_DIR=$CACHE_DIR/$KEY
FINAL_BIN=$FINAL_DIR/llama-server

if [[ -x $FINAL_BIN ]]; then
  echo "llama-server: cached $FINAL_BIN"
  exit 0
fi

CMAKE_FLAGS=(
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=OFF
  -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
  -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
  -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF
  -DLLAMA_OPENSSL=OFF
)
GENERATOR=()
if command -v ninja >/dev/null 2>&1; then
  GENERATOR=(-G Ninja)
fi
for tool in cmake c++ tar sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || { echo "build_llama_server.sh: '$tool' not found" >&2; exit 1; }
done

# The temp dir lives inside CACHE_DIR so the final rename stays on one filesystem (atomic).
mkdir -p "$CACHE_DIR"
WORK=$(mktemp -d "$CACHE_DIR/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

echo "llama-server (llama-cpp-python $VERSION): building a portable binary (about 5 minutes on 2 cores)" >&2
"${PIP_CMD[@]}" download --no-deps --no-binary :all: --no-cache-dir \
  "llama-cpp-python==$VERSION" -d "$WORK/dl" >&2
SDIST=$(find "$WORK/dl" -maxdepth 1 -name "llama_cpp_python-$VERSION.tar.gz" -print -quit)
if [[ -z $SDIST ]]; then
  echo "build_llama_server.sh: pip did not produce llama_cpp_python-$VERSION.tar.gz" >&2
  ls -l "$WORK/dl" >&2 || true
  exit 1
fi
GOT_SHA256=$(sha256sum "$SDIST" | cut -d' ' -f1)
if [[ $GOT_SHA256 != "$SDIST_SHA256" ]]; then
  echo "build_llama_server.sh: sha256 mismatch for $(basename "$SDIST")" >&2
  echo "  expected $SDIST_SHA256" >&2
  echo "  got      $GOT_SHA256" >&2
  exit 1
fi

mkdir -p "$WORK/src"
tar -xzf "$SDIST" -C "$WORK/src"
LLAMA_SRC=$WORK/src/llama_cpp_python-$VERSION/vendor/llama.cpp
[[ -f $LLAMA_SRC/CMakeLists.txt ]] || { echo "build_llama_server.sh: no llama.cpp in $LLAMA_SRC" >&2; exit 1; }

cmake -S "$LLAMA_SRC" -B "$WORK/build" "${GENERATOR[@]}" "${CMAKE_FLAGS[@]}" >&2
cmake --build "$WORK/build" --target llama-server -j "$JOBS" >&2

BUILT=$WORK/build/bin/llama-server
[[ -x $BUILT ]] || { echo "build_llama_server.sh: build finished but $BUILT is missing" >&2; exit 1; }
# Smoke test: the binary must start on this host (catches illegal-instruction builds).
"$BUILT" --version >&2

STAGE=$WORK/out
mkdir -p "$STAGE"
install -m 0755 "$BUILT" "$STAGE/llama-server"
{
  echo "llama-server built from llama-cpp-python $VERSION (vendor/llama.cpp)"
  echo "sdist_sha256: $SDIST_SHA256"
  echo "llama_cpp: $("$BUILT" --version 2>&1 | grep -m1 -i version || true)"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
  echo "compiler: $(c++ --version | head -n1)"
  echo "generator: ${GENERATOR[*]:-default}"
  echo "cmake_flags: ${CMAKE_FLAGS[*]}"
} >"$STAGE/BUILD_INFO"

# Rename the finished folder into place in one step. A leftover folder without a usable binary
# is replaced; if a concurrent run got there first, keep its result.
if [[ -x $FINAL_BIN ]]; then
  echo "llama-server: $FINAL_BIN"
  exit 0
fi
rm -rf "$FINAL_DIR"
mv -T "$STAGE" "$FINAL_DIR" || [[ -x $FINAL_BIN ]]
echo "llama-server: $FINAL_BIN"
