#!/usr/bin/env bash
# Installs Debian's Chromium (/usr/bin/chromium) and a font for it, which tests/tpo_demo.rs uses to render the
# demonstration's report.html headless and check what it draws. Needs root and Debian's
# package registry; does nothing where Chromium is already installed.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
as_root=()
if [ "$(id -u)" != 0 ]; then
    as_root=(sudo)
fi
for try in 1 2 3; do
    if "${as_root[@]}" apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null; then
        break
    fi
    if [ "$try" = 3 ]; then
        echo "install-chromium.sh: apt-get could not install chromium" >&2
        exit 1
    fi
    sleep 5
done
/usr/bin/chromium --version
