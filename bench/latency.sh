#!/usr/bin/env bash
# Added latency of a full mesh hop at a fixed rate (issue 6, target 4), in one run, the variants in a
# rotated order each round. The service is the shop example's shop.v1.UserService/GetUser, in its two forms:
#   native   exemesh bench -> one HTTP/2 connection -> shop-user-native (the same logic rewritten
#            in Rust, a plain tonic server: examples/shop/native)                 (the baseline)
#   worker   exemesh bench -> one HTTP/2 connection -> exemesh serve -> a shop.py worker (user.toml)
#   mesh     exemesh bench -> the mesh channel (discovery, p2c/peak-EWMA, retries) -> 2 replicas of
#            exemesh serve -> shop.py workers: the full hop a caller in the mesh pays
# The direct variants use `--client exemesh`, the connection the mesh channel opens to each
# endpoint, so all three share one client transport and the differences are the servers' (and the
# mesh channel's balancing).
# Each variant is paced at RATE calls/s (open loop, --rate: a call that finds every slot busy
# counts its wait), so the latency is what a steady load sees, not what saturation does.
# Usage: bench/latency.sh [ROUNDS=5] [SECONDS=3] [RATE=1000]
#   (writes bench/results/latency.jsonl and prints a table of p50/p99 and what each adds)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
secs=${2:-3}
rate=${3:-1000}
. bench/lib.sh
cargo build --release --locked -q -p shop-native
bench_init

"$bin" registry --listen 127.0.0.1:0 >"$work/reg" 2>/dev/null & pids+=($!)
reg=$(addr_of "$work/reg")
for i in 1 2; do
  EXEMESH_LOG=warn "$bin" serve examples/shop/user.toml --listen 127.0.0.1:0 --discovery "$reg" \
    --instance-id "user-$i" >"$work/s$i" 2>"$work/s$i.log" & pids+=($!)
done
target/release/shop-user-native --listen 127.0.0.1:0 >"$work/native" 2>"$work/native.log" & pids+=($!)
a1=$(addr_of "$work/s1")
addr_of "$work/s2" >/dev/null
native=$(addr_of "$work/native")
method=shop.v1.UserService/GetUser
request='{"id":"u1"}'
# Ready before the clock starts: both worker pools answer, and discovery lists both replicas.
until_ok 20 "$bin" call "$a1" "$method" "$request"
until_ok 20 serving "$reg" 2

out=bench/results/latency.jsonl
mkdir -p bench/results
: >"$out"
for round in $(seq 1 "$rounds"); do
  for variant in $(rotated "$round" native worker mesh); do
    case $variant in
      native) args=(--client exemesh "$native" "$method") ;;
      worker) args=(--client exemesh "$a1" "$method") ;;
      mesh) args=(--discovery "$reg" "$method") ;;
    esac
    "$bin" bench "${args[@]}" "$request" --rate "$rate" -c 32 -z "${secs}s" --warmup 500ms --json \
      | tag "$variant" "$round" >>"$out"
  done
done
python3 - "$out" "$rate" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
med = lambda v, k: statistics.median(r["latency_us"][k] for r in runs if r["variant"] == v) / 1000
base = {k: med("native", k) for k in ("p50", "p99")}
print(f"At {float(sys.argv[2]):,.0f} calls/s (paced), medians of {len({r['round'] for r in runs})} rounds:")
print()
print("| variant | calls/s | p50 ms | p99 ms | p99.9 ms | adds at p50 | adds at p99 | errors |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for v in ("native", "worker", "mesh"):
    rs = [r for r in runs if r["variant"] == v]
    rps = statistics.median(r["rps"] for r in rs)
    p50, p99, p999 = med(v, "p50"), med(v, "p99"), med(v, "p99.9")
    errors = sum(sum(r["errors"].values()) for r in rs)
    print(f"| {v} | {rps:,.0f} | {p50:.3f} | {p99:.3f} | {p999:.3f} | {p50 - base['p50']:+.3f} | {p99 - base['p99']:+.3f} | {errors} |")
PY
