#!/usr/bin/env bash
# Debian's headless Chromium, for the test that opens `consortium audit trace --html`'s
# report in a real browser (tests/cli/test_audit_html.py). Installed once; a machine
# that has it already is left alone.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-chromium: Debian's chromium package is needed (apt-get install chromium)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
command -v chromium
