#!/bin/sh
# Debian packages some tests drive for real (headless Chromium for the web page, mosquitto for MQTT).
# Installed when this runs as root (or with password-less sudo) on a machine with apt-get; anywhere
# else it says why not, and those tests skip with the reason. Never fails the build by itself.
set -u
missing=""
for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "note: no apt-get here; not installing$missing (the tests that need them skip with the reason)"
    exit 0
fi
if [ "$(id -u)" = 0 ]; then SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"
else
    echo "note: not root; to run every test: sudo apt-get install$missing (those tests skip until then)"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
echo "installing Debian packages:$missing"
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q --no-install-recommends $missing >/dev/null; } \
    || echo "note: apt-get could not install$missing (the tests that need them skip with the reason)"
exit 0
