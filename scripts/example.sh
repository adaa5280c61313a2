#!/usr/bin/env bash
# Builds exemesh and runs the shop example as a local mesh (examples/shop/mesh.toml):
#   `exemesh up` starts the embedded registry and 2 replicas each of ProductService (the unmodified
#   shop.py CLI in spawn mode), UserService and OrderService (pools of shop.py workers). OrderService's
#   PlaceOrder calls UserService and ProductService through the mesh.
# The mesh runs with mTLS (its CA and certificates live in a temporary state directory); the CLI
# calls with the operator identity `up` issues (EXEMESH_TLS_DIR).
# Then it makes a few calls through discovery and keeps the mesh running until Ctrl-C
# (pass --once to stop after the demo).
set -euo pipefail
cd "$(dirname "$0")/.."
once=0
[ "${1:-}" = "--once" ] && once=1

cargo build --release --locked
bin="$PWD/target/release/exemesh"
state=$(mktemp -d)
export SHOP_DB="$state/orders.db"
up_pid=
cleanup() {
  if [ -n "$up_pid" ]; then kill -INT "$up_pid" 2>/dev/null || true; wait "$up_pid" 2>/dev/null || true; fi
  rm -rf "$state"
}
trap cleanup EXIT INT TERM

# A free port for the registry is chosen by exemesh itself (the default is 127.0.0.1:7700).
"$bin" up examples/shop/mesh.toml --registry-listen 127.0.0.1:0 --state-dir "$state/mesh" >"$state/up.out" 2>"$state/up.log" &
up_pid=$!
for _ in $(seq 1 1200); do
  grep -q "^mesh up:" "$state/up.out" 2>/dev/null && break
  kill -0 "$up_pid" 2>/dev/null || { cat "$state/up.log"; exit 1; }
  sleep 0.1
done
cat "$state/up.out"
registry=$(sed -n 's/^registry listening on //p' "$state/up.out")
export EXEMESH_TLS_DIR="$state/mesh/tls/cli"

show() { echo; echo "\$ exemesh call --discovery $registry $*"; "$bin" call --discovery "$registry" "$@" || echo "(exit code $?)"; }
show shop.v1.ProductService/GetProduct '{"id":"p1"}'
show shop.v1.ProductService/ListProducts '{"category":"grocery"}'
show shop.v1.ProductService/GetProduct '{"id":"p404"}'
show shop.v1.UserService/GetUser '{"id":"u1"}'
show shop.v1.OrderService/PlaceOrder '{"userId":"u1","lines":[{"productId":"p1","quantity":2},{"productId":"p3","quantity":1}]}'
show shop.v1.OrderService/PlaceOrder '{"userId":"nobody","lines":[{"productId":"p1","quantity":1}]}'

if [ "$once" = 1 ]; then exit 0; fi
echo
echo "The mesh is running with mTLS (logs: $state/up.log). Try:"
echo "  export EXEMESH_TLS_DIR=$EXEMESH_TLS_DIR"
echo "  $bin status --discovery $registry"
echo "  $bin trace --discovery $registry            # recent traces; add a trace id for its waterfall"
echo "  $bin bench --discovery $registry shop.v1.UserService/GetUser '{\"id\":\"u2\"}' -c 8 -z 5s"
echo "Ctrl-C stops everything (workers included)."
wait "$up_pid"
