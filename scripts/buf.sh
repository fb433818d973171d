#!/usr/bin/env bash
# The API contract checks, with buf from PyPI (`buf-bin`, in the tools venv), on the buf module
# in proto/ (rules and their exceptions: proto/buf.yaml).
#
#   scripts/buf.sh check      buf lint; buf format (must change nothing); buf breaking against
#                             proto/breaking-baseline.binpb, the image of the last release
#   scripts/buf.sh baseline   rewrite that image from the current protos: run at release time
#                             (`cargo xtask api-baseline`) and commit it with the release
#
# The baseline is a committed file rather than a git ref because CI checks a fresh clone of main,
# where "the merge-base with main" is the commit itself. Between releases the API may change
# freely; from one release to the next, a v1 package may only grow.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$("$root/scripts/python-tools.sh" buf-bin)" || { echo "cannot install buf"; exit 1; }
buf="$bin/buf"
baseline="breaking-baseline.binpb"
cd "$root/proto" || exit 1

case "${1:-check}" in
  check)
    passed=0 failed=0
    step() {
      local name="$1" out; shift
      if out="$("$@" 2>&1)"; then
        passed=$((passed + 1)); echo "ok   buf $name"
      else
        failed=$((failed + 1)); echo "FAIL buf $name:"; sed 's/^/     /' <<<"$out"
      fi
    }
    step lint "$buf" lint
    step "format (run \`buf format -w\` in proto/ to fix)" "$buf" format --diff --exit-code
    step "breaking against $baseline" "$buf" breaking --against "$baseline"
    echo "buf: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    ;;
  baseline)
    # Without source info the image holds only what the breaking rules compare.
    "$buf" build --exclude-source-info -o "$baseline" &&
      echo "wrote proto/$baseline ($(wc -c <"$baseline") bytes): commit it with the release"
    ;;
  *)
    echo "usage: scripts/buf.sh [check|baseline]" >&2
    exit 2
    ;;
esac
