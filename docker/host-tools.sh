#!/usr/bin/env bash
# The host tools the image and monitoring tests use: podman and debootstrap (make image builds the
# image with them, from a base made offline) and promtool (checks the Prometheus rules). Installs the
# missing ones from Debian's packages when it can (root, apt-get); otherwise says so loudly and
# leaves the tests that need them to skip, saying why.
set -euo pipefail

declare -A package=([podman]=podman [debootstrap]=debootstrap [promtool]=prometheus)
missing=()
for tool in podman debootstrap promtool; do
  command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null 2>&1 \
    || missing+=("${package[$tool]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "!!! host-tools: ${missing[*]} not installed and this is not a root shell with apt-get:" >&2
  echo "!!! the image test and the promtool checks will be SKIPPED (apt-get install ${missing[*]})" >&2
  exit 0
fi
echo "host-tools: installing ${missing[*]} (Debian packages)"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }; then
  echo "!!! host-tools: apt-get could not install ${missing[*]}: the tests that need them will be SKIPPED" >&2
fi
