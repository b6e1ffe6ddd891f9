#!/usr/bin/env bash
# Builds llama-cpp-python from source with a fixed, portable set of CPU flags and
# installs it into the given venv.
#
# Why: the default (native) build enables llama.cpp's AMX int8 weight repacking on
# Sapphire-Rapids-class CPUs, which segfaults on batched evaluation
# (ggml-org/llama.cpp#20824). The portable AVX2 build is stable everywhere.
# The wheel is kept in a cache directory whose name is a hash of the version and
# the flags, and installed from there with --no-index, so pip's own wheel cache can
# never hand back a wheel that was built with other flags.
set -euo pipefail

PY="${1:?usage: install-llama-cpp.sh VENV_PYTHON}"
VERSION="0.3.36"
FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
KEY=$(printf '%s|%s|%s' "$VERSION" "$FLAGS" "$(uname -m)" | sha256sum | cut -c1-16)
CACHE="${CONSORTIUM_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/consortium/wheels}/llama-cpp-python-$VERSION-$KEY"

installed_key=$("$PY" -c 'import importlib.metadata as m, pathlib, sys
try:
    d = m.distribution("llama_cpp_python")
    p = pathlib.Path(str(d.locate_file("llama_cpp/.consortium-build-key")))
    print(p.read_text().strip() if p.exists() else "")
except m.PackageNotFoundError:
    print("")' 2>/dev/null || true)
if [ "$installed_key" = "$KEY" ]; then
  exit 0
fi

if ! ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $VERSION (portable CPU flags; takes several minutes on 2 cores)"
  tmp=$(mktemp -d)
  CMAKE_ARGS="$FLAGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$PY" -m pip wheel --no-deps --no-cache-dir --no-binary llama-cpp-python \
      -w "$tmp" "llama-cpp-python==$VERSION" >"$tmp/build.log" 2>&1 \
    || { tail -40 "$tmp/build.log"; echo "llama-cpp-python build failed (log: $tmp/build.log)"; exit 1; }
  mkdir -p "$CACHE"
  mv "$tmp"/llama_cpp_python-*.whl "$CACHE"/
  rm -rf "$tmp"
fi
"$PY" -m pip install -q --no-index --no-deps --force-reinstall "$CACHE"/llama_cpp_python-"$VERSION"-*.whl
"$PY" -m pip install -q diskcache jinja2 numpy typing-extensions
site=$("$PY" -c 'import importlib.metadata as m; print(m.distribution("llama_cpp_python").locate_file("llama_cpp"))')
printf '%s\n' "$KEY" >"$site/.consortium-build-key"
printf 'flags: %s\n' "$FLAGS" >"$site/.consortium-build-flags"
