#!/usr/bin/env bash
# Creates the project's virtualenv (.venv) with the package and its dev tools, installing
# Python's venv support from the distribution first when it is missing. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}

python=${PYTHON:-python3}
if ! command -v "$python" >/dev/null 2>&1 || ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
  echo "bootstrap: installing python3 with venv support" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq python3 python3-venv python3-pip >/dev/null
  python=python3
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "bootstrap: GamePipeline needs Python 3.11 or newer; $("$python" --version) found" >&2
  exit 1
fi

# The tests drive the API with curl exactly as the design document's example does.
if ! command -v curl >/dev/null 2>&1; then
  echo "bootstrap: installing curl" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip 2>/dev/null || true
"$venv/bin/python" -m pip install --quiet -e '.[dev]'
touch "$venv/.installed"
