#!/usr/bin/env bash
# Installs Debian's chromium for the dashboard's browser test, unless it is already there.
# Playwright drives it through executable_path; Playwright's own browser download is never
# used (it is not reachable from the test machines). Safe to run again.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
echo "ensure-chromium: installing Debian's chromium" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
/usr/bin/chromium --version >&2
