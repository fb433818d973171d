#!/usr/bin/env bash
# Node clients (@grpc/grpc-js + @grpc/proto-loader, loading the repo's protos) drive a real
# `palisade dev` through the gateway with node's own test runner: the same session as the
# Python suite.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
command -v node >/dev/null && command -v npm >/dev/null || { echo "node and npm are needed"; exit 1; }

# The packages are installed from the npm registry into the tools cache (reinstalled when the
# committed lockfile changes), never into the repo.
here="$root/tests/interop/node"
modules="$tools_dir/node"
mkdir -p "$modules"
if [ ! -d "$modules/node_modules" ] || ! cmp -s "$here/package-lock.json" "$modules/package-lock.json"; then
  cp "$here/package.json" "$here/package-lock.json" "$modules/"
  (cd "$modules" && npm ci --no-audit --no-fund --loglevel=error) || { echo "npm ci failed"; exit 1; }
fi

start_mesh
NODE_PATH="$modules/node_modules" node --test --test-reporter=spec "$here/mesh.test.js"
