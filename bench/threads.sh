#!/usr/bin/env bash
# What services with half the runtime threads (`--threads`, at least one; their default since the
# twenty-first session) do against a thread per CPU (tokio's default, and exemesh's before), measured
# in one run (docs/benchmarks.md, "Runtime threads"). Two identical
# set-ups run side by side, each a registry, 2 replicas of the shop's product service, haproxy in
# front of them and a worker-mode server (a pool of 2 Python workers, bench/python/worker.toml);
# one has every one of those exemesh processes started with EXEMESH_THREADS=$(( $(nproc) / 2 )) (at
# least 1), the other with EXEMESH_THREADS=$(nproc). The client, `exemesh bench`, is the same for both (a thread per CPU). Calls back to
# back at 1 / 16 / 64 in flight, in rounds with the variants in a rotated order:
#   mesh     the mesh channel over the 2 replicas (grpc.health.v1.Health/Check)
#   direct   a plain tonic channel to one replica (the same method)
#   haproxy  a plain tonic channel through haproxy to the 2 replicas (the same method)
#   worker   exemesh's client to the worker-mode server (bench.v1.Echo/Unary, as bench/python.sh)
# Usage: bench/threads.sh [ROUNDS=5] [SECONDS=3]   (writes bench/results/threads.jsonl)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
secs=${2:-3}
root=$PWD
. bench/lib.sh
need_venv
need_haproxy
bench_init
unset EXEMESH_THREADS
cpus=$(nproc)
half=$((cpus / 2))
[ "$half" -ge 1 ] || half=1
health=grpc.health.v1.Health/Check
echo_method=bench.v1.Echo/Unary
protos=(--proto bench/python/echo.proto -I bench/python)
sed -e "s|@ROOT@|$root|g" -e "s|@PYTHON@|$py|g" bench/python/worker.toml >"$work/worker.toml"
declare -A reg direct hport worker
for setting in half percpu; do
  env=()
  [ "$setting" = half ] && env=(EXEMESH_THREADS="$half") || env=(EXEMESH_THREADS="$cpus")
  env "${env[@]}" "$bin" registry --listen 127.0.0.1:0 >"$work/reg-$setting" 2>/dev/null &
  pids+=($!)
  reg[$setting]=$(addr_of "$work/reg-$setting")
  for i in 1 2; do
    env "${env[@]}" EXEMESH_LOG=warn "$bin" serve examples/shop/product.toml --listen 127.0.0.1:0 \
      --discovery "${reg[$setting]}" --instance-id "$setting-$i" >"$work/s-$setting-$i" 2>/dev/null &
    pids+=($!)
  done
  env "${env[@]}" EXEMESH_LOG=warn "$bin" serve "$work/worker.toml" --listen 127.0.0.1:0 >"$work/w-$setting" 2>/dev/null &
  pids+=($!)
  a1=$(addr_of "$work/s-$setting-1")
  a2=$(addr_of "$work/s-$setting-2")
  direct[$setting]=$a1
  worker[$setting]=$(addr_of "$work/w-$setting")
  haproxy_in_front "$setting" "$a1" "$a2"
  hport[$setting]=$haproxy_port
  until_ok 20 "$bin" call "127.0.0.1:${hport[$setting]}" "$health"
  until_ok 20 serving "${reg[$setting]}" 2
  until_ok 20 "$bin" call "${protos[@]}" "${worker[$setting]}" "$echo_method" '{"text":"ready"}'
done

# Runs `exemesh bench` on PATH (mesh, direct, haproxy, worker) of the set-up SETTING, then ARGS.
bench_path() {
  local path=$1 setting=$2
  shift 2
  case $path in
    mesh) "$bin" bench --discovery "${reg[$setting]}" --service shop.v1.ProductService "$health" "$@" --json ;;
    direct) "$bin" bench "${direct[$setting]}" "$health" "$@" --json ;;
    haproxy) "$bin" bench "127.0.0.1:${hport[$setting]}" "$health" "$@" --json ;;
    worker) "$bin" bench --client exemesh "${protos[@]}" "${worker[$setting]}" "$echo_method" '{"text":"bench"}' "$@" --json ;;
  esac
}

out=bench/results/threads.jsonl
ab_rounds "$rounds" "$secs" "$out" half percpu mesh direct haproxy worker
echo "Calls back to back, medians; the services with $half runtime thread(s) (--threads $half) against $cpus"
echo "(a thread per CPU, the default); \"half / per CPU\" is the median of each round's ratio."
echo
python3 bench/ab_table.py "$out" -percpu half "per CPU" mesh direct haproxy worker
