#!/usr/bin/env bash
# A Python client generated from the repo's protos (grpcio-tools, in the tools venv) drives a
# real `palisade dev`: the pytest suite in python/ goes through the gateway with the operator
# key, decodes google.rpc error details (grpcio-status), reads a server stream, and joins the
# mesh directly over mTLS with a certificate of its own.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
bin="$("$root/scripts/python-tools.sh" grpcio-tools grpcio-status grpcio-health-checking pytest)" ||
  { echo "cannot install the Python tools"; exit 1; }

# Generated code goes to this run's scratch dir, never into the repo. Only Palisade's own
# packages are generated: google.api and google.rpc come from googleapis-common-protos.
gen="$work/python-client"
mkdir -p "$gen"
mapfile -t protos < <(cd "$root/proto" && find palisade -name '*.proto' | sort)
(cd "$root/proto" && "$bin/python" -m grpc_tools.protoc -I . --python_out="$gen" \
  --pyi_out="$gen" --grpc_python_out="$gen" "${protos[@]}") || { echo "protoc failed"; exit 1; }

start_mesh
cd "$root/tests/interop/python" &&
  PYTHONPATH="$gen" "$bin/python" -m pytest -v -p no:cacheprovider .
