#!/usr/bin/env bash
# What busy polling (--busy-poll, on by default with windows of up to 100 µs) buys and costs,
# measured in one run. Two identical meshes run side by side, each a registry, 2 replicas of the
# shop's product service and haproxy in front of them; one has every exemesh process started with
# EXEMESH_BUSY_POLL=0 (off), and `exemesh bench` runs with the setting of the mesh it calls.
#   1. Calls back to back at 1 / 16 / 64 in flight (rounds, variants in a rotated order), the
#      method grpc.health.v1.Health/Check: the mesh channel, a plain tonic channel to one replica
#      (direct) and the haproxy hop, each with polling on and off.
#   2. Paced calls through the mesh channel at 1,000 / 5,000 / 20,000 calls/s: the CPU time the
#      client and the replicas spend per call, and p50/p99, with polling on and off.
#   3. Idle: the CPU time the registry and replicas of each mesh use without calls (5 s; 2 s when
#      SECONDS is under 3, as in the quick suite).
# Usage: bench/busy_poll.sh [ROUNDS=5] [SECONDS=3]   (writes bench/results/busy_poll.jsonl)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
secs=${2:-3}
. bench/lib.sh
need_haproxy
bench_init
unset EXEMESH_BUSY_POLL
method=grpc.health.v1.Health/Check
declare -A reg direct hport procs
for setting in on off; do
  poll=100
  [ "$setting" = off ] && poll=0
  EXEMESH_BUSY_POLL=$poll "$bin" registry --listen 127.0.0.1:0 >"$work/reg-$setting" 2>/dev/null &
  pids+=($!)
  procs[$setting]=$!
  reg[$setting]=$(addr_of "$work/reg-$setting")
  for i in 1 2; do
    EXEMESH_BUSY_POLL=$poll EXEMESH_LOG=warn "$bin" serve examples/shop/product.toml --listen 127.0.0.1:0 \
      --discovery "${reg[$setting]}" --instance-id "$setting-$i" >"$work/s-$setting-$i" 2>/dev/null &
    pids+=($!)
    procs[$setting]+=" $!"
  done
  a1=$(addr_of "$work/s-$setting-1")
  a2=$(addr_of "$work/s-$setting-2")
  direct[$setting]=$a1
  haproxy_in_front "$setting" "$a1" "$a2"
  hport[$setting]=$haproxy_port
  until_ok 20 "$bin" call "127.0.0.1:${hport[$setting]}" "$method"
  until_ok 20 serving "${reg[$setting]}" 2
done

# Runs `exemesh bench` on PATH (mesh, direct, haproxy) of the mesh with polling SETTING, then ARGS.
bench_path() {
  local path=$1 setting=$2 poll=100
  shift 2
  [ "$setting" = off ] && poll=0
  local target
  case $path in
    mesh) target=(--discovery "${reg[$setting]}" --service shop.v1.ProductService) ;;
    direct) target=("${direct[$setting]}") ;;
    haproxy) target=("127.0.0.1:${hport[$setting]}") ;;
  esac
  EXEMESH_BUSY_POLL=$poll "$bin" bench "${target[@]}" "$method" "$@" --json
}

out=bench/results/busy_poll.jsonl
ab_rounds "$rounds" "$secs" "$out" on off mesh direct haproxy
echo "Calls back to back, medians; \"on / off\" is the median of each round's ratio."
echo
python3 bench/ab_table.py "$out" -off on off mesh direct haproxy

# CPU seconds (user + system) used so far by the processes PIDS.
cpu_of() {
  local total=0 p
  for p in "$@"; do
    total=$(awk -v t="$total" -v hz="$(getconf CLK_TCK)" '{print t + ($14 + $15) / hz}' "/proc/$p/stat")
  done
  echo "$total"
}

echo
echo "Paced through the mesh channel ($secs s each): CPU time per call of the client and of the 2 replicas."
echo
echo "| calls/s | polling | client µs/call | replicas µs/call | p50 ms | p99 ms |"
echo "|---:|---|---:|---:|---:|---:|"
for rate in 1000 5000 20000; do
  for setting in off on; do
    # shellcheck disable=SC2086 # a list of pids
    before=$(cpu_of ${procs[$setting]})
    poll=100
    [ "$setting" = off ] && poll=0
    EXEMESH_BUSY_POLL=$poll /usr/bin/time -f "%U %S" -o "$work/time" "$bin" bench --discovery "${reg[$setting]}" \
      --service shop.v1.ProductService "$method" --rate "$rate" -c 64 -z "${secs}s" --warmup 0s --json >"$work/paced.json"
    # shellcheck disable=SC2086
    after=$(cpu_of ${procs[$setting]})
    python3 - "$rate" "$setting" "$before" "$after" "$work/time" "$work/paced.json" <<'PY'
import json, sys
rate, setting, before, after = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
user, system = map(float, open(sys.argv[5]).read().split()[-2:])
r = json.load(open(sys.argv[6]))
n = r["calls"]
print(f"| {int(rate):,} | {setting} | {(user + system) * 1e6 / n:.1f} | {(after - before) * 1e6 / n:.1f} | "
      f"{r['latency_us']['p50'] / 1000:.3f} | {r['latency_us']['p99'] / 1000:.3f} |")
PY
  done
done

echo
# shellcheck disable=SC2086
on0=$(cpu_of ${procs[on]}); off0=$(cpu_of ${procs[off]})
idle=5
[ "$secs" -lt 3 ] && idle=2
sleep "$idle"
# shellcheck disable=SC2086
on1=$(cpu_of ${procs[on]}); off1=$(cpu_of ${procs[off]})
echo "Idle for $idle s, the registry and 2 replicas of each mesh: CPU time used with polling off $(awk -v a="$off0" -v b="$off1" 'BEGIN {printf "%.0f", (b - a) * 1000}') ms, on $(awk -v a="$on0" -v b="$on1" 'BEGIN {printf "%.0f", (b - a) * 1000}') ms."
