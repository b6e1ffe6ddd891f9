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
# other by name; netavark sets the network up with iptables (this kernel has netfilter,
# the machines lack only the command).
missing=()
for pkg in podman podman-compose mmdebstrap runc netavark aardvark-dns iptables; do
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

# The build's pip is set up as the host's: its configuration files, the local package
# directories and files they name (find-links, file:// indexes, constraints) and the
# host's CA bundle (a proxy's CA may be in it), lent read-only for the build's RUN steps;
# mounts are never part of a layer, so none of it is in the image.
lent=()
confs=()
for f in /etc/pip.conf /etc/xdg/pip/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf"; do
  [ -f "$f" ] && confs+=("$f")
done
paths=("${confs[@]}")
if [ "${#confs[@]}" -gt 0 ]; then
  while IFS= read -r p; do paths+=("$p"); done < <(
    # a file:// index's pages link to files beside its simple/: its parent is lent
    grep -hoE '(file://)?/[^[:space:]]+' "${confs[@]}" | sed 's#^file://##; s#/simple/*$##' | sort -u)
fi
[ -f /etc/ssl/certs/ca-certificates.crt ] && paths+=(/etc/ssl/certs/ca-certificates.crt)
for p in "${paths[@]}"; do
  [ -e "$p" ] && lent+=(--volume "$p:$p:ro")
done

echo "building $IMAGE from $base" >&2
podman build --format docker --layers \
  --runtime runc --ulimit nofile=16384:16384 --ulimit nproc=4096:4096 \
  --build-arg "BASE_IMAGE=$base" \
  --volume "$cache/container-pip:/root/.cache/pip" "${lent[@]}" \
  -f "$here/Containerfile" -t "$IMAGE" "$stage" >&2
echo "$IMAGE"
