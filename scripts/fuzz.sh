#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time and fails on the first crash.
#   usage: scripts/fuzz.sh [seconds per target, default 20] [target...]
# cargo-fuzz is installed (once) into the tools dir if missing. libFuzzer needs nightly
# compiler flags; on a stable toolchain RUSTC_BOOTSTRAP=1 unlocks them. A crash leaves its
# input in fuzz/artifacts/<target>/ (replay: cargo fuzz run <target> <file>).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="${PALISADE_TOOLS_DIR:-/var/tmp/palisade-tools}/cargo"
export PATH="$tools/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked --root "$tools" cargo-fuzz >&2
fi
export RUSTC_BOOTSTRAP=1
seconds="${1:-20}"
shift || true
cd "$root/fuzz"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
for target in "${targets[@]}"; do
  echo "fuzz: $target for ${seconds}s" >&2
  mkdir -p "corpus/$target"
  # -rss_limit_mb: the transcoder holds the whole descriptor pool; the default 2 GiB is plenty
  # but explicit. Exit status is non-zero on a crash, leak, timeout or out-of-memory.
  cargo fuzz run --release "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >&2
done
echo "fuzz: ${#targets[@]} targets ran ${seconds}s each without a crash" >&2
