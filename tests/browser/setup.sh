#!/usr/bin/env bash
# What the browser test needs besides the Python packages: Debian's Chromium and npm, installed with
# apt-get when absent (never `playwright install`: it downloads a browser build and fails offline), and
# local copies of the CDN packages the site loads (npm pack, once, into .ci-cache/npm/).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-.venv/bin/python}"

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
    echo "browser setup: installing Debian ${missing[*]}"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
"$PYTHON" tests/browser/fetch_assets.py
