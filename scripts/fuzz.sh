#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo-fuzz, libFuzzer) for a bounded time on the stable toolchain:
#   scripts/fuzz.sh [SECONDS]      # SECONDS per target, 20 by default
# Installs cargo-fuzz (pinned) when it is missing, builds the targets once, then fuzzes each one from
# its seed corpus (fuzz/corpus/<target>, never modified) plus the corpus earlier runs grew
# (fuzz/target/corpus/<target>). Exits non-zero when a target crashes, hangs or runs out of memory;
# the input is left in fuzz/artifacts/<target>/. docs/fuzzing.md explains the targets and what to do
# with a crash.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-20}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/fuzz.sh [SECONDS]  (seconds per target, a positive integer)" >&2
  exit 2
fi
cargo_fuzz_version=0.13.2
targets=(worker_frame json_proto manifest otlp_span)
# --sanitizer none: AddressSanitizer needs nightly's -Zsanitizer, and the fuzzed code is safe Rust.
# --debug-assertions: overflow checks and debug_assert!s turn silent bugs into crashes.
build=(--sanitizer none --debug-assertions)
# libFuzzer's limits: memory, input size, and the time one input may take before it counts as a hang.
limits=(-rss_limit_mb=2048 -max_len=8192 -timeout=25 -print_final_stats=1)

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $cargo_fuzz_version" ]; then
  cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked
fi

# fuzz/Cargo.lock is the root Cargo.lock's pins plus libFuzzer's crates. cargo fuzz has no --locked,
# so check it here; when exemesh's dependencies changed since it was refreshed, refresh it from the
# root's pins rather than let cargo resolve the new crates to their latest versions.
if ! cargo fetch --locked --manifest-path fuzz/Cargo.toml 2>/dev/null; then
  echo "fuzz/Cargo.lock is out of date with exemesh's dependencies: refreshing it from Cargo.lock" \
    "(commit the result)" >&2
  cp Cargo.lock fuzz/Cargo.lock
  cargo fetch --manifest-path fuzz/Cargo.toml
fi
cargo fuzz build "${build[@]}"

failed=()
for target in "${targets[@]}"; do
  echo "=== fuzzing $target for ${seconds}s"
  grown="$PWD/fuzz/target/corpus/$target"
  mkdir -p "$grown"
  # libFuzzer adds new inputs to the first directory only. The sed drops its lines per new input,
  # per newly covered function and per recommended dictionary entry, keeping progress and crashes.
  if ! cargo fuzz run "${build[@]}" "$target" "$grown" "$PWD/fuzz/corpus/$target" -- \
      -max_total_time="$seconds" "${limits[@]}" 2>&1 |
      sed -u -E '/^#[0-9]+[[:space:]]+(NEW|REDUCE)[[:space:]]|^[[:space:]]+NEW_FUNC|# Uses: [0-9]+$/d'; then
    failed+=("$target")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzzing found crashes in: ${failed[*]} (inputs in fuzz/artifacts/; see docs/fuzzing.md)" >&2
  exit 1
fi
echo "fuzzing: ${#targets[@]} targets ran ${seconds}s each without a crash"
