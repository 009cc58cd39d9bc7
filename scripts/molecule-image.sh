#!/usr/bin/env bash
# Builds the image the provisioning scenario converges: a bare Debian host made with
# debootstrap from the Debian archive and loaded with `docker import` (no image registry is
# reachable from the test machines). The image is kept under its tag, so reruns are instant.
#
# Environment: MOLECULE_IMAGE (tag), DEBIAN_SUITE, DEBIAN_MIRROR.
set -euo pipefail

image=${MOLECULE_IMAGE:-gamepipeline/molecule-debian:bookworm-2}
suite=${DEBIAN_SUITE:-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if docker image inspect "$image" >/dev/null 2>&1; then
  exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
  echo "molecule-image: installing debootstrap" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq debootstrap >/dev/null
fi

rootfs=$(mktemp -d /tmp/gamepipeline-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT

# A bare host as an operator gets it: the minimal base plus the python3 Ansible needs.
# tini stands in for the host's init as PID 1: it reaps the daemons the roles' init
# scripts start, so that a stopped service is gone rather than a zombie.
echo "molecule-image: debootstrap $suite into $rootfs (a few minutes)" >&2
debootstrap --variant=minbase --include=python3,ca-certificates,tini \
  "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
  tail -n 30 "$rootfs.log" >&2
  exit 1
}
rm -f "$rootfs.log"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

tar -C "$rootfs" -c . | docker import \
  --change 'ENTRYPOINT ["/usr/bin/tini", "--"]' \
  --change 'CMD ["sleep", "infinity"]' \
  --change 'ENV LANG=C.UTF-8' \
  - "$image" >/dev/null
echo "molecule-image: built $image" >&2
