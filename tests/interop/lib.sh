# Sourced by every interop script: where things are, and a real `palisade dev` to drive.
#
#   source "$(dirname "$0")/lib.sh"
#   start_mesh            # exports PALISADE_GATEWAY, PALISADE_API_KEY, PALISADE_CERTS, ...
#
# The mesh runs on a free block of four loopback ports in a temp dir and is stopped (and the
# dir removed) when the sourcing script exits.

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# The palisade binary to run: `cargo xtask test` builds it into the target dir first.
palisade="${PALISADE_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/palisade}"
# Tools the scripts install (a Python venv, node_modules) live here, reused across runs.
tools_dir="${PALISADE_TOOLS_DIR:-/var/tmp/palisade-tools}"
# Scratch space for this run (generated clients, logs, the mesh's data dir).
work="$(mktemp -d "${TMPDIR:-/tmp}/palisade-interop.XXXXXX")"
mesh_pid=""

cleanup() {
  if [ -n "$mesh_pid" ]; then
    kill "$mesh_pid" 2>/dev/null
    wait "$mesh_pid" 2>/dev/null
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# A free block of four ports: the gateway on the first, identity, compliance and
# observability on the next three; their admin ports ten above each.
free_port_block() {
  python3 -c 'import socket, random
while True:
    base = random.randrange(20000, 60000, 20)
    ok = True
    for port in [*range(base, base + 4), *range(base + 10, base + 14)]:
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            ok = False
        finally:
            s.close()
    if ok:
        print(base)
        break'
}

# Starts `palisade dev` and waits until it says the mesh is up. Another process may take a
# port between the probe and the bind, so a start that dies early is retried on a new block.
start_mesh() {
  [ -x "$palisade" ] || { echo "build palisade first: cargo build -p palisade" >&2; exit 1; }
  local attempt
  for attempt in 1 2 3; do
    PALISADE_PORT_BASE="$(free_port_block)"
    rm -rf "$work/data"
    # The mesh gets no `PALISADE_*` setting from the caller's environment (an exported
    # `PALISADE_CORS_ALLOWED_ORIGINS` or `PALISADE_TRACING` would change what the tests
    # see): only the flags below.
    local inherited=() name
    for name in $(compgen -e); do
      [[ "$name" == PALISADE_* ]] && inherited+=(-u "$name")
    done
    env "${inherited[@]}" "$palisade" dev --data-dir "$work/data" \
      --port-base "$PALISADE_PORT_BASE" >"$work/dev.out" 2>"$work/dev.log" &
    mesh_pid=$!
    local _
    for _ in $(seq 300); do
      if grep -q "mesh is up" "$work/dev.out" 2>/dev/null; then
        export PALISADE_PORT_BASE
        export PALISADE_DATA_DIR="$work/data"
        export PALISADE_CERTS="$work/data/certs"
        export PALISADE_GATEWAY="127.0.0.1:$PALISADE_PORT_BASE"
        export PALISADE_API_KEY
        PALISADE_API_KEY="$(cat "$work/data/operator-api-key")"
        export PALISADE_BIN="$palisade"
        export PALISADE_PROTO_DIR="$root/proto"
        return 0
      fi
      kill -0 "$mesh_pid" 2>/dev/null || break
      sleep 0.2
    done
    echo "palisade dev did not come up (attempt $attempt); its log:" >&2
    sed 's/^/  /' "$work/dev.log" >&2
    kill "$mesh_pid" 2>/dev/null
    wait "$mesh_pid" 2>/dev/null
    mesh_pid=""
  done
  echo "palisade dev failed to start" >&2
  exit 1
}

# The address of a component's own (mTLS) port: identity, compliance or observability.
component_addr() {
  case "$1" in
    identity) echo "127.0.0.1:$((PALISADE_PORT_BASE + 1))" ;;
    compliance) echo "127.0.0.1:$((PALISADE_PORT_BASE + 2))" ;;
    observability) echo "127.0.0.1:$((PALISADE_PORT_BASE + 3))" ;;
    *) echo "unknown component $1" >&2; return 1 ;;
  esac
}
