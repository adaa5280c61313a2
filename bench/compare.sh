#!/usr/bin/env bash
# Before/after for an optimisation: two exemesh binaries serving the same worker-mode manifest
# (test.v1.Echo/Unary on a pool of 2 Python workers), called by the same `exemesh bench` in
# rounds (order rotated each round) at 1, 16 and 64 calls in flight. Build the "before" binary from the commit before
# the change, e.g.:
#   git worktree add /tmp/before COMMIT && (cd /tmp/before && cargo build --release) &&
#   bench/compare.sh /tmp/before/target/release/exemesh target/release/exemesh
# With BEFORE_TREE=DIR (a checkout of the earlier commit), the "before" server runs that checkout's
# worker and Python helper (sdk/python) too, to measure a change to the helper:
#   BEFORE_TREE=/tmp/before bench/compare.sh target/release/exemesh target/release/exemesh
# Usage: bench/compare.sh BEFORE AFTER [ROUNDS=5] [SECONDS=3]   (writes bench/results/compare.jsonl)
set -euo pipefail
cd "$(dirname "$0")/.."
before=$(realpath "$1")
after=$(realpath "$2")
rounds=${3:-5}
secs=${4:-3}
. bench/lib.sh
bench_init --no-build
health_serving() { "$after" call "$1" grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING; }
echo_manifest "$work/after.toml"
if [ -n "${BEFORE_TREE:-}" ]; then
  (cd "$BEFORE_TREE" && echo_manifest "$work/before.toml")
else
  cp "$work/after.toml" "$work/before.toml"
fi

declare -A addr
for variant in before after; do
  bin=${!variant}
  "$bin" serve "$work/$variant.toml" --listen 127.0.0.1:0 >"$work/$variant.out" 2>"$work/$variant.log" &
  pids+=($!)
  addr[$variant]=$(addr_of "$work/$variant.out")
  # Wait until the worker pool is ready (health SERVING).
  until_ok 20 health_serving "${addr[$variant]}"
done

out=bench/results/compare.jsonl
mkdir -p bench/results
: >"$out"
for round in $(seq 1 "$rounds"); do
  for c in 1 16 64; do
    for variant in $(rotated "$round" before after); do
      "$after" bench "${addr[$variant]}" test.v1.Echo/Unary '{"text":"bench"}' -c "$c" -z "${secs}s" --warmup 500ms --json \
        | tag "$variant" "$round" >>"$out"
    done
  done
done
python3 bench/report.py "$out" before after
