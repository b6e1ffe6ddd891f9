#!/usr/bin/env bash
# Builds the node's image (deploy/container/Containerfile) on this machine, as
# `make test-container` does: installs podman, podman-compose and mmdebstrap from Debian
# if they are missing, makes the base image once (base-image.sh), stages the build
# context and builds. Prints the image's name.
#
# The context's wheels/ is the host's llama-cpp-python wheel cache (the one
# scripts/install-llama-cpp.sh fills; same Debian, same Python), so the image installs
# the wheel the host built instead of compiling it again. pip's downloads are kept in
# ~/.cache/consortium/container-pip between builds, and podman's layer cache keeps the
# dependencies' layer while pyproject.toml does not change.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
IMAGE="${CONSORTIUM_IMAGE:-localhost/consortium-node:latest}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/consortium"
wheels="${CONSORTIUM_WHEEL_CACHE:-$cache/wheels}"

# netavark and aardvark-dns: the compose network, on which organizations find each
# other by name.
missing=()
for pkg in podman podman-compose mmdebstrap runc netavark aardvark-dns; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing ${missing[*]} (apt)" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

base=$(bash "$here/base-image.sh")

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$root/pyproject.toml" "$root/README.md" "$stage"/
mkdir -p "$stage/scripts" "$stage/wheels"
cp "$root/scripts/install-llama-cpp.sh" "$stage/scripts/"
tar -C "$root" --exclude=__pycache__ -cf - consortium | tar -C "$stage" -xf -
if [ -d "$wheels" ]; then
  cp -r "$wheels"/. "$stage/wheels/"
fi
mkdir -p "$cache/container-pip"

echo "building $IMAGE from $base" >&2
podman build --format docker --layers \
  --runtime runc --ulimit nofile=65536:65536 --ulimit nproc=8192:8192 \
  --build-arg "BASE_IMAGE=$base" \
  --volume "$cache/container-pip:/root/.cache/pip" \
  -f "$here/Containerfile" -t "$IMAGE" "$stage" >&2
echo "$IMAGE"
