#!/usr/bin/env bash
# Builds exemesh and runs the shop example (examples/shop): ProductService wraps the unmodified
# shop.py CLI (spawn mode), UserService and OrderService run as pools of shop.py workers. It makes a
# few calls with `exemesh call`, then keeps serving until Ctrl-C (pass --once to stop after the demo).
set -euo pipefail
cd "$(dirname "$0")/.."
once=0
[ "${1:-}" = "--once" ] && once=1

cargo build --release --locked
bin="$PWD/target/release/exemesh"
state=$(mktemp -d)
export SHOP_DB="$state/orders.db"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$state"
}
trap cleanup EXIT INT TERM

declare -A addr
for svc in product user order; do
  "$bin" serve "examples/shop/$svc.toml" --listen 127.0.0.1:0 >"$state/$svc.out" 2>"$state/$svc.log" &
  pids+=("$!")
done
for svc in product user order; do
  for _ in $(seq 1 300); do
    line=$(head -n1 "$state/$svc.out" 2>/dev/null || true)
    [ -n "$line" ] && break
    sleep 0.05
  done
  addr[$svc]=${line#listening on }
  # Ready when gRPC health says SERVING (workers have sent their ready frame).
  for _ in $(seq 1 300); do
    if "$bin" call "${addr[$svc]}" grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING; then break; fi
    sleep 0.05
  done
done

show() { echo; echo "\$ exemesh call $*"; "$bin" call "$@" || echo "(exit code $?)"; }
echo "shop.v1.ProductService  ${addr[product]}   (spawn: ./shop.py product get|list)"
echo "shop.v1.UserService     ${addr[user]}   (worker pool: ./shop.py worker x2)"
echo "shop.v1.OrderService    ${addr[order]}   (worker pool: ./shop.py worker x2)"
show "${addr[product]}" shop.v1.ProductService/GetProduct '{"id":"p1"}'
show "${addr[product]}" shop.v1.ProductService/ListProducts '{"category":"grocery"}'
show "${addr[product]}" shop.v1.ProductService/GetProduct '{"id":"p404"}'
show "${addr[user]}" shop.v1.UserService/GetUser '{"id":"u1"}'
show "${addr[order]}" shop.v1.OrderService/PlaceOrder '{"userId":"u1","lines":[{"productId":"p1","quantity":2}]}'

if [ "$once" = 1 ]; then exit 0; fi
echo
echo "Serving. Try: $bin call ${addr[user]} shop.v1.UserService/GetUser '{\"id\":\"u2\"}'"
echo "Logs: $state/*.log. Ctrl-C stops everything (workers included)."
wait
