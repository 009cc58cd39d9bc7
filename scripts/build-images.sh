#!/usr/bin/env bash
# Builds the local stand-ins for the images that the shipped and original pipelines name.
# No registry is reachable from GameNodes under test, so each stand-in is a tiny busybox
# root filesystem imported with `docker import` and tagged with the real image's name.
# An image already built from this script's current version is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

busybox=$(command -v busybox || true)
# The applet list is read whole before it is searched. `busybox --list | grep -qx httpd`
# fails now and then under pipefail: grep -q quits at the first match, and busybox, still
# writing, dies of SIGPIPE (about 1 run in 40), which sent a machine whose busybox has
# httpd to apt-get.
applets=
if [ -n "$busybox" ]; then
  applets=$("$busybox" --list || true)
fi
if ! grep -qx httpd <<<"$applets"; then
  echo "build-images: installing busybox-static" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq busybox-static >/dev/null
  busybox=$(command -v busybox)
fi

stamp=$(cat "$0" | sha256sum | cut -c1-12)
# The minio stand-in is also rebuilt when the files laid over its Debian root change.
minio_stamp=$( (cat "$0"; find scripts/stand-ins/minio -type f | sort | xargs cat) | sha256sum | cut -c1-12)
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

# registry.cn-qingdao.aliyuncs.com/wod/devops-minio:1.0 runs `mc alias set` and `mc cp`
# against real object storage, so its stand-in is a Debian root with python3 (made once by
# debootstrap from Debian's archive and kept in $GAMEPIPELINE_CACHE) plus
# scripts/stand-ins/minio, whose `mc` speaks S3 with AWS Signature V4.
minio_tag=registry.cn-qingdao.aliyuncs.com/wod/devops-minio:1.0
have=$(docker image inspect -f "{{ index .Config.Labels \"$label\" }}" "$minio_tag" 2>/dev/null || true)
if [ "$have" != "$minio_stamp" ]; then
  cache=${GAMEPIPELINE_CACHE:-/var/cache/gamepipeline}
  debian=$cache/debian-bookworm-python3
  if [ ! -e "$debian/.complete" ]; then
    if ! command -v debootstrap >/dev/null 2>&1; then
      echo "build-images: installing debootstrap" >&2
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq debootstrap >/dev/null
    fi
    echo "build-images: debootstrap bookworm with python3 into $debian (about a minute)" >&2
    mkdir -p "$cache"
    rm -rf "$debian.partial"
    debootstrap --variant=minbase --include=python3 bookworm "$debian.partial" \
      "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$cache/debootstrap.log" 2>&1 || {
      tail -n 30 "$cache/debootstrap.log" >&2
      exit 1
    }
    rm -rf "$debian.partial"/var/cache/apt/archives/*.deb "$debian.partial"/var/lib/apt/lists/* \
      "$debian.partial"/usr/share/doc/* "$debian.partial"/usr/share/man/* \
      "$debian.partial"/usr/share/locale/*
    touch "$debian.partial/.complete"
    rm -rf "$debian"
    mv "$debian.partial" "$debian"
  fi
  echo "build-images: $minio_tag" >&2
  # Only the overlay's files: the engine refuses a stream naming a folder twice.
  overlay=$(cd scripts/stand-ins/minio && find . -type f | sort)
  # shellcheck disable=SC2086 # one word per file
  tar -c --exclude ./.complete -C "$debian" . -C "$PWD/scripts/stand-ins/minio" $overlay |
    docker import \
      --change 'CMD ["bash"]' \
      --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin' \
      --change 'ENV LANG=C.UTF-8' \
      --change "LABEL $label=$minio_stamp" \
      - "$minio_tag" >/dev/null
fi
