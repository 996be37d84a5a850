#!/usr/bin/env bash
# install-venv.sh DIR REQUIREMENTS PYTHON: a pinned Python environment at DIR
# (the Makefile's install_venv), safe while other makes use or build it.
#
# - A lock (flock on DIR.lock) lets one make build it; the others wait and
#   then find it done.
# - It is built in a fresh directory DIR-<random> and published by pointing
#   the symlink DIR at it with a rename (mv -T), which is atomic: DIR is
#   either absent, or a complete environment. The environment stays at the
#   path it was created at, which its scripts' shebangs and pyvenv.cfg name
#   (a venv cannot be moved).
# - A complete environment (one with .installed) is never deleted. An
#   incomplete DIR left by an older Makefile (which built in place) is
#   replaced; a build that fails removes its own directory.
set -euo pipefail

dest="${1:?usage: install-venv.sh DIR REQUIREMENTS PYTHON}"
requirements="${2:?usage: install-venv.sh DIR REQUIREMENTS PYTHON}"
python="${3:?usage: install-venv.sh DIR REQUIREMENTS PYTHON}"
dest="${dest%/}"
mkdir -p "$(dirname "$dest")"

exec 9>"$dest.lock"
flock 9

if [[ -e "$dest/.installed" ]]; then
    exit 0 # another make built it while this one waited
fi

build="$(mktemp -d "$dest-XXXXXXXX")"
trap 'rm -rf "$build"' EXIT
"$python" -m venv "$build"
"$build/bin/python" -m pip install --quiet --no-input -r "$requirements"
touch "$build/.installed"

if [[ -d "$dest" && ! -L "$dest" ]]; then
    # Incomplete (checked above) and in the old layout: a rename cannot put
    # a symlink over a directory.
    rm -rf "$dest"
fi
ln -sfn "$(basename "$build")" "$dest.new.$$"
mv -T "$dest.new.$$" "$dest"
trap - EXIT
