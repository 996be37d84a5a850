#!/usr/bin/env bash
# install-prometheus.sh DIR: a Prometheus server for the metrics test, from
# Debian's `prometheus` package unpacked into DIR (DIR/usr/bin/prometheus).
# Unpacked, not installed: no service is started, no user is created, and
# nothing outside DIR changes. Safe while other makes use or build it (a
# lock, then an atomic rename).
set -euo pipefail

dest="${1:?usage: install-prometheus.sh DIR}"
dest="${dest%/}"
mkdir -p "$(dirname "$dest")"
exec 9>"$dest.lock"
flock 9
if [[ -x "$dest/usr/bin/prometheus" ]]; then
    exit 0
fi

work="$(mktemp -d "$dest-XXXXXXXX")"
trap 'rm -rf "$work"' EXIT
cd "$work"
# The package lists may be missing or stale on a fresh machine.
if ! apt-get download prometheus >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]]; then apt-get update -qq; else sudo apt-get update -qq; fi
    apt-get download prometheus
fi
dpkg-deb -x prometheus_*.deb root
"$work/root/usr/bin/prometheus" --version >/dev/null
rm -rf "$dest"
mv -T "$work/root" "$dest"
echo "prometheus unpacked into $dest"
