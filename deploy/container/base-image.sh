#!/usr/bin/env bash
# Makes the base image of deploy/container/Containerfile when it does not exist yet: a
# Debian root file system of this host's release (its apt sources), with its Python 3.11
# and the C/C++ runtime llama.cpp links (libgomp1, libstdc++6), made with mmdebstrap and
# `podman import`ed. No container registry is reachable, so nothing is pulled. Prints the
# image's name. A second run returns at once: the image is the cache (`podman rmi` it to
# rebuild).
set -euo pipefail

# shellcheck disable=SC1091  # the host's own file
codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
IMAGE="${CONSORTIUM_BASE_IMAGE:-localhost/consortium-base:$codename-py3.11}"
if podman image exists "$IMAGE"; then
  echo "$IMAGE"
  exit 0
fi

sources=/etc/apt/sources.list.d/debian.sources
[ -f "$sources" ] || sources=/etc/apt/sources.list
[ -f "$sources" ] || { echo "no Debian apt sources on this host" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "making $IMAGE: Debian $codename with python3.11 (mmdebstrap; a few minutes)" >&2
mmdebstrap --quiet --variant=apt --format=tar \
  --include=python3.11,python3.11-venv,ca-certificates,libgomp1,libstdc++6 \
  --aptopt='APT::Install-Recommends "false"' \
  --customize-hook='rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*' \
  "$codename" "$tmp/rootfs.tar" "$sources" >&2
podman import --quiet \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  "$tmp/rootfs.tar" "$IMAGE" >/dev/null
echo "$IMAGE"
