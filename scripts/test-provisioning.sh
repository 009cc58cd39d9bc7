#!/usr/bin/env bash
# Tests node provisioning (issue 7): the collection beaglewind.gamepipeline and playbooks/.
#   1. ruff and mypy on the collection's Python, ansible-lint (production profile) on the
#      collection and the playbooks, and `ansible-galaxy collection build`;
#   2. the inventory plugin's unit tests and its integration test against a real server;
#   3. the molecule scenario: playbooks/site.yml converged into a server container and a
#      GameNode container, idempotence, then the agent verified connected.
# Needs the virtualenv (`make venv`) and a Docker engine (scripts/docker-up.sh); builds the
# scenario's Debian image once (scripts/molecule-image.sh). About 6 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${VENV:-.venv}
export PATH="$root/$venv/bin:$PATH"
collection=collections/ansible_collections/beaglewind/gamepipeline
out=var/provisioning
mkdir -p "$out"

step() { printf '\n== %s\n' "$*" >&2; }

step "ruff and mypy: the collection's Python and its tests"
ruff format --check "$collection" tests/unit/collection tests/integration/test_inventory_plugin.py
ruff check "$collection" tests/unit/collection tests/integration/test_inventory_plugin.py
MYPYPATH=collections mypy --strict --ignore-missing-imports --explicit-package-bases \
  "$collection/plugins" tests/unit/collection

step "ansible-lint --profile production"
ansible-lint --profile production "$collection" playbooks

step "ansible-galaxy collection build"
ansible-galaxy collection build --force --output-path "$out" "$collection"

step "inventory plugin: unit tests and the test against a real server"
python -m pytest -q tests/unit/collection tests/integration/test_inventory_plugin.py

step "molecule: converge, idempotence, verify"
scripts/docker-up.sh
scripts/molecule-image.sh
(cd "$collection" && molecule test)
