#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time and fails on the first crash.
#   usage: scripts/fuzz.sh [seconds per target, default 20] [target...]
# `cargo xtask test` runs it with PALISADE_FUZZ_SECONDS (default 15) per target.
#
# cargo-fuzz is installed (once) into the tools dir if missing. libFuzzer needs nightly
# compiler flags; on a stable toolchain RUSTC_BOOTSTRAP=1 unlocks them.
#
# Builds go to "$CARGO_TARGET_DIR/fuzz" (else target/fuzz), so they outlive the clone like the
# workspace build does and a warm run only recompiles what changed; the corpus lives there too,
# so each run starts from the inputs earlier runs found. A crash leaves its input in
# fuzz/artifacts/<target>/ (replay: cargo fuzz run <target> <file>).
#
# Sanitizer: none by default (PALISADE_FUZZ_SANITIZER=address for AddressSanitizer). The
# gateway and its parsers forbid unsafe code, so what a short run can find is a panic: an
# unwrap, an out-of-bounds index, a failed assertion of the target, and — with debug
# assertions on (-a) — integer overflow and debug_assert!s. Those all abort without ASan.
# ASan adds memory-error detection in dependencies' unsafe code (prost, bytes, serde_json…,
# fuzzed upstream) at the price of a slower build of every crate and roughly half the
# executions per second (ASan's usual ~2x), which matters more in a 15-second budget.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="${PALISADE_TOOLS_DIR:-/var/tmp/palisade-tools}/cargo"
export PATH="$tools/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  # Its own throwaway build dir: the shared target dir's lock would queue it behind other builds.
  env -u CARGO_TARGET_DIR cargo install --locked --root "$tools" cargo-fuzz >&2
fi
export RUSTC_BOOTSTRAP=1
seconds="${1:-20}"
shift || true
sanitizer="${PALISADE_FUZZ_SANITIZER:-none}"
state="${CARGO_TARGET_DIR:-$root/target}/fuzz"
# Under one target dir, a build per sanitizer: switching back and forth rebuilds nothing.
target_dir="$state/$sanitizer"
build=(--release --debug-assertions --sanitizer "$sanitizer" --target-dir "$target_dir")
cd "$root/fuzz"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
start=$SECONDS
# One build of every target first, so its time is not taken from the first target's budget.
cargo fuzz build "${build[@]}" >&2
echo "fuzz: built ${#targets[@]} targets in $((SECONDS - start))s (sanitizer: $sanitizer)" >&2
for target in "${targets[@]}"; do
  echo "fuzz: $target for ${seconds}s" >&2
  corpus="$state/corpus/$target"
  mkdir -p "$corpus"
  # -rss_limit_mb: the transcoder holds the whole descriptor pool; the default 2 GiB is plenty
  # but explicit. Exit status is non-zero on a crash, leak, timeout or out-of-memory.
  cargo fuzz run "${build[@]}" "$target" "$corpus" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >&2
done
echo "fuzz: ${#targets[@]} targets ran ${seconds}s each without a crash" >&2
