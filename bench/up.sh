#!/usr/bin/env bash
# The memory of a whole local mesh (issue 6, target 5): `exemesh up examples/shop/mesh.toml` as a
# user runs it (mTLS on, 3 services x 2 replicas), then load through discovery on every service:
# UserService/GetUser (worker mode), ProductService/GetProduct (spawn mode) and
# OrderService/PlaceOrder (worker mode, calling the other two through the mesh). The RSS of
# exemesh's own processes (`up` with its registry and trace store, the `exemesh serve` instances and
# their reaper guards; not the Python executables) is read from /proc, idle and after the load, as
# PSS (the processes' share of the memory they use) and as RSS, plus the sum of each process's
# RSS peak (VmHWM, an upper bound).
# Usage: bench/up.sh [SECONDS=5]   (writes bench/results/up.jsonl and prints a table;
#        BENCH_DEBUG=1 also prints each process's share)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
. bench/lib.sh
bench_init
"$bin" up examples/shop/mesh.toml --registry-listen 127.0.0.1:0 --state-dir "$work/state" >"$work/up.out" 2>"$work/up.log" &
pids+=($!)
up=$!
until_ok 120 grep -q "mesh up:" "$work/up.out" || { cat "$work/up.out" "$work/up.log" >&2; exit 1; }
reg=$(sed -n 's/^registry listening on \([^ ]*\).*/\1/p' "$work/up.out")
export EXEMESH_TLS_DIR=$work/state/tls/cli
[ -d "$EXEMESH_TLS_DIR" ] || EXEMESH_TLS_DIR=$(sed -n 's/.*export EXEMESH_TLS_DIR=\([^ ]*\).*/\1/p' "$work/up.out")

# exemesh's own processes: `up` and every descendant whose program is exemesh.
own() {
  local pid=$1
  echo "$pid"
  for child in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
    if [ "$(cat /proc/"$child"/comm 2>/dev/null)" = exemesh ]; then own "$child"; fi
  done
}
# sum FIELD FILE: a /proc/PID/FILE field (kB) summed over those processes.
sum() { for p in $(own "$up"); do awk "/^$1:/ {print \$2}" "/proc/$p/$2" 2>/dev/null; done | awk '{s+=$1} END {print s+0}'; }
# Both totals are reported: RSS counts the pages of the exemesh binary that every process shares
# once per process; PSS (proportional set size) shares them out, so it adds up to the memory used.
totals() { echo "$(sum VmRSS status) $(sum Pss smaps_rollup)"; }
count=$(own "$up" | wc -l)
read -r idle idle_pss <<<"$(totals)"
"$bin" bench --discovery "$reg" shop.v1.UserService/GetUser '{"id":"u1"}' -c 8 -z "${secs}s" --json >"$work/user.json" &
"$bin" bench --discovery "$reg" shop.v1.ProductService/GetProduct '{"id":"p1"}' -c 4 -z "${secs}s" --json >"$work/product.json" &
"$bin" bench --discovery "$reg" shop.v1.OrderService/PlaceOrder '{"userId":"u1","lines":[{"productId":"p1","quantity":1}]}' -c 8 -z "${secs}s" --json >"$work/order.json" &
wait %2 %3 %4 2>/dev/null || true
read -r after after_pss <<<"$(totals)"
# BENCH_DEBUG=1: each process's PSS and anonymous memory after the load, on stderr.
if [ -n "${BENCH_DEBUG:-}" ]; then
  for p in $(own "$up"); do
    printf '%s %s pss %s kB anon %s kB\n' "$p" "$(tr '\0' ' ' </proc/"$p"/cmdline | cut -c1-60)" \
      "$(awk '/^Pss:/ {print $2}' /proc/"$p"/smaps_rollup)" "$(awk '/^Pss_Anon:/ {print $2}' /proc/"$p"/smaps_rollup)"
  done >&2
fi
peak=$(sum VmHWM status)
mkdir -p bench/results
python3 - "$work" "$count" "$idle" "$after" "$peak" "$idle_pss" "$after_pss" >bench/results/up.jsonl <<'PY'
import json, sys
work, count, idle, after, peak, idle_pss, after_pss = sys.argv[1], *map(int, sys.argv[2:])
load = {n: json.load(open(f"{work}/{n}.json")) for n in ("user", "product", "order")}
print(json.dumps({"variant": "up", "processes": count, "rss_idle_kb": idle, "rss_after_kb": after,
                  "rss_peak_sum_kb": peak, "pss_idle_kb": idle_pss, "pss_after_kb": after_pss, "load": {n: {"rps": r["rps"], "errors": r["errors"]} for n, r in load.items()}}))
PY
python3 - <<'PY'
import json
r = json.loads(open("bench/results/up.jsonl").readline())
print(f"`exemesh up examples/shop/mesh.toml` (mTLS): {r['processes']} exemesh processes")
print()
print("| exemesh's processes, in total | PSS MB | RSS MB (shared pages counted per process) |")
print("|---|---:|---:|")
print(f"| idle | {r['pss_idle_kb'] / 1024:.1f} | {r['rss_idle_kb'] / 1024:.1f} |")
print(f"| after the load | {r['pss_after_kb'] / 1024:.1f} | {r['rss_after_kb'] / 1024:.1f} |")
print(f"| sum of each process's peak | | {r['rss_peak_sum_kb'] / 1024:.1f} |")
print()
print("Load, at the same time: " + ", ".join(f"{n} {v['rps']:,.0f} calls/s ({sum(v['errors'].values())} errors)" for n, v in r["load"].items()) + ".")
PY
