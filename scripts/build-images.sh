#!/usr/bin/env bash
# Builds the local stand-ins for the images that the shipped and original pipelines name.
# No registry is reachable from GameNodes under test, so each stand-in is a tiny busybox
# root filesystem imported with `docker import` and tagged with the real image's name.
# An image already built from this script's current version is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

busybox=$(command -v busybox || true)
if [ -z "$busybox" ] || ! "$busybox" --list | grep -qx httpd; then
  echo "build-images: installing busybox-static" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq busybox-static >/dev/null
  busybox=$(command -v busybox)
fi

stamp=$(cat "$0" | sha256sum | cut -c1-12)
label=io.beaglewind.gamepipeline.stand-in

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs"/bin "$rootfs"/www "$rootfs"/tmp "$rootfs"/etc "$rootfs"/data
cp "$busybox" "$rootfs"/bin/busybox
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs"/etc/passwd
echo 'root:x:0:' >"$rootfs"/etc/group
echo '<html><body>GamePipeline stand-in game server</body></html>' >"$rootfs"/www/index.html

# image tag | CMD as JSON
images=(
  'gamepipeline/stand-in:busybox|["sleep","infinity"]'
  'mysql:8.0|["sleep","infinity"]'
  'game-server:latest|["httpd","-f","-p","8080","-h","/www"]'
  'ubuntu:latest|["sh"]'
  'registry.cn-qingdao.aliyuncs.com/wod/alpine:3|["sh"]'
)

for entry in "${images[@]}"; do
  tag=${entry%%|*}
  cmd=${entry#*|}
  have=$(docker image inspect -f "{{ index .Config.Labels \"$label\" }}" "$tag" 2>/dev/null || true)
  if [ "$have" = "$stamp" ]; then
    continue
  fi
  echo "build-images: $tag" >&2
  tar -C "$rootfs" -c . | docker import \
    --change "CMD $cmd" \
    --change 'ENV PATH=/bin' \
    --change "LABEL $label=$stamp" \
    - "$tag" >/dev/null
done
