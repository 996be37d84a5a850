#!/usr/bin/env bash
# install-chromium.sh: Chromium and its WebDriver (chromedriver) for the
# browser tests, from Debian's `chromium` and `chromium-driver` packages;
# nothing to do when both are already there. They are system packages (the
# browser needs its libraries installed, not unpacked), so this needs root
# or sudo. Safe while another make runs it (a lock).
set -euo pipefail

if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
    exit 0
fi
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
lock="${XDG_RUNTIME_DIR:-/tmp}/chat-install-chromium.lock"
exec 9>"$lock"
flock 9
if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
    exit 0 # installed while this one waited
fi
echo "==> installing Debian's chromium and chromium-driver (first run only)"
export DEBIAN_FRONTEND=noninteractive
# The package lists may be missing or stale on a fresh machine.
if ! as_root apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; then
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
/usr/bin/chromium --version
/usr/bin/chromedriver --version
