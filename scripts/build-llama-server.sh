#!/usr/bin/env bash
# Builds llama.cpp's own llama-server and llama-batched-bench from the llama.cpp source
# vendored in the llama-cpp-python sdist the node runs, with the same CPU flags as
# scripts/install-llama-cpp.sh, so the concurrency benchmark compares the node with an
# anchor built from identical code and flags. Prints the directory holding the two
# binaries.
#
# The build is cached under ~/.cache/consortium/llama-server-<KEY>/, KEY being the same
# hash of version, flags and architecture that install-llama-cpp.sh uses; a second run
# returns at once. Not part of `make test`: it takes ~15 minutes on 2 cores.
set -euo pipefail

PY="${1:-${PYTHON:-python3}}"
VERSION="0.3.36"
FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
KEY=$(printf '%s|%s|%s' "$VERSION" "$FLAGS" "$(uname -m)" | sha256sum | cut -c1-16)
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/consortium"
OUT="$CACHE_ROOT/llama-server-$KEY"

if [ -x "$OUT/llama-server" ] && [ -x "$OUT/llama-batched-bench" ]; then
  echo "$OUT"
  exit 0
fi

SDIST_DIR="$CACHE_ROOT/sdists"
SDIST="$SDIST_DIR/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$SDIST" ]; then
  mkdir -p "$SDIST_DIR"
  "$PY" -m pip download -q --no-binary :all: --no-deps -d "$SDIST_DIR" \
    "llama-cpp-python==$VERSION" >&2
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$SDIST" -C "$tmp"
SRC="$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp"
echo "building llama-server and llama-batched-bench $VERSION (portable CPU flags; ~15 minutes on 2 cores)" >&2
# The web UI is neither built (needs npm) nor downloaded (no network at build time);
# the server then serves a placeholder page, which the benchmark never asks for.
# shellcheck disable=SC2086  # FLAGS is a list of cmake arguments
cmake -S "$SRC" -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF $FLAGS \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF >"$tmp/configure.log" 2>&1 \
  || { tail -40 "$tmp/configure.log" >&2; echo "cmake configure failed" >&2; exit 1; }
cmake --build "$tmp/build" --config Release -j "$(nproc)" \
  --target llama-server llama-batched-bench >"$tmp/build.log" 2>&1 \
  || { tail -40 "$tmp/build.log" >&2; echo "llama-server build failed" >&2; exit 1; }

stage="$CACHE_ROOT/.llama-server-$KEY.partial"
rm -rf "$stage"
mkdir -p "$stage"
cp "$tmp/build/bin/llama-server" "$tmp/build/bin/llama-batched-bench" "$stage"/
printf 'version: %s\nflags: %s\n' "$VERSION" "$FLAGS" >"$stage/build-flags"
rm -rf "$OUT"
mv "$stage" "$OUT"
echo "$OUT"
