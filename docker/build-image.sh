#!/usr/bin/env bash
# `make image`: build the giftcoin image with podman.
#
#   docker/build-image.sh [IMAGE]            IMAGE defaults to localhost/giftcoin:dev
#   IMAGE_BASE=pinned docker/build-image.sh  the Dockerfile's pinned python:3.11-slim (needs its registry)
#
# By default (IMAGE_BASE=offline) the base is Debian bookworm's own Python 3.11, made here with
# debootstrap from Debian's packages and imported into podman once (localhost/giftcoin-base:bookworm),
# so that the image builds where no container registry can be reached. The Dockerfile is the same
# either way: only its PYTHON_IMAGE build argument differs. Exit status 3: podman (or debootstrap)
# cannot be had here.
set -euo pipefail
cd "$(dirname "$0")/.."

image="${1:-localhost/giftcoin:dev}"
base_image="localhost/giftcoin-base:bookworm"
export PATH="$PATH:/usr/sbin:/sbin"

bash docker/host-tools.sh
need=(podman)
[ "${IMAGE_BASE:-offline}" = offline ] && need+=(debootstrap)
for tool in "${need[@]}"; do
  if ! command -v "$tool" >/dev/null; then
    echo "build-image: $tool is not installed and cannot be installed here (apt-get install ${need[*]})" >&2
    exit 3
  fi
done

build_args=()
if [ "${IMAGE_BASE:-offline}" = offline ]; then
  if ! podman image exists "$base_image"; then
    root="$(mktemp -d /var/tmp/giftcoin-base.XXXXXX)"
    trap 'rm -rf "$root"' EXIT
    echo "build-image: making $base_image with debootstrap (once; about a minute)"
    debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3 bookworm "$root/rootfs" \
      >"$root/debootstrap.log" 2>&1 || { tail -20 "$root/debootstrap.log" >&2; exit 1; }
    rm -rf "$root"/rootfs/var/cache/apt/archives/*.deb "$root"/rootfs/var/lib/apt/lists/*
    tar -C "$root/rootfs" -c . | podman import --quiet - "$base_image" >/dev/null
  fi
  build_args+=(--build-arg "PYTHON_IMAGE=$base_image")
fi
# Behind a TLS-inspecting proxy pip needs the host's CA bundle: mounted for the build, never copied in.
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  build_args+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/giftcoin-build-ca.crt:ro
    --build-arg PIP_CERT=/etc/giftcoin-build-ca.crt)
fi
# chroot isolation: builds where podman cannot run containers (no cgroups for crun), as root.
podman build --isolation chroot "${build_args[@]}" --tag "$image" --file Dockerfile .
echo "build-image: built $image"
