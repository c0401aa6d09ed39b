#!/usr/bin/env bash
# Make sure headless Chromium is installed (Debian's `chromium` package), for tests/test_web_browser.py.
# Idempotent: does nothing when `chromium` is already on PATH. Needs root (or sudo) and apt on a fresh machine.
#   scripts/ensure_chromium.sh          # install if missing, print the version
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    chromium --version 2>/dev/null || true
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium is not installed and apt-get is not available: install Chromium by hand" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "chromium is not installed: run 'apt-get install -y chromium' as root" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
chromium --version
