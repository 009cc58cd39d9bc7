#!/usr/bin/env bash
# Makes sure a Docker engine answers: installs Debian's docker.io when there is no daemon,
# and starts dockerd in the background when none is running (CI starts with none).
set -euo pipefail

if docker info >/dev/null 2>&1; then
  exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
  echo "docker-up: installing docker.io" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io >/dev/null
fi

if command -v systemctl >/dev/null 2>&1 && systemctl start docker 2>/dev/null; then
  :
else
  log=${DOCKERD_LOG:-/var/log/gamepipeline-dockerd.log}
  echo "docker-up: starting dockerd (log: $log)" >&2
  nohup dockerd >"$log" 2>&1 &
fi

for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 0.5
done
echo "docker-up: the Docker engine did not answer within 30 s; see ${DOCKERD_LOG:-/var/log/gamepipeline-dockerd.log}" >&2
exit 1
