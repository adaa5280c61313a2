# Shared setup of the bench scripts. Source it from the repository root:
#   cd "$(dirname "$0")/.." && . bench/lib.sh && bench_init [--no-build]
# It provides $bin (the release exemesh), $work (a temporary directory removed at exit), pids (the
# processes to stop at exit with SIGTERM; `exemesh up` then stops its children), and helpers.

# Builds release (unless --no-build), makes the work directory and arms the cleanup.
bench_init() {
  [ "${1:-}" = --no-build ] || cargo build --release --locked -q
  bin="$PWD/target/release/exemesh"
  work=$(mktemp -d)
  pids=()
  trap bench_cleanup EXIT INT TERM
}

bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

# The address a server printed ("listening on ADDR") to FILE, waiting up to 20 s for it.
addr_of() {
  for _ in $(seq 1 400); do
    if grep -q "listening on" "$1" 2>/dev/null; then
      sed -n 's/^listening on //p' "$1" | head -1
      return
    fi
    sleep 0.05
  done
  echo "no address in $1" >&2
  cat "$1" >&2
  exit 1
}

# until_ok SECONDS CMD...: runs CMD (quietly) every 50 ms until it succeeds; after SECONDS, says
# which command never did and fails (the scripts run under `set -e`, so they stop there).
until_ok() {
  local limit=$1 end=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$end" ]; then
      echo "not ready after ${limit} s: $*" >&2
      return 1
    fi
    sleep 0.05
  done
}

# serving REGISTRY N: true when discovery at REGISTRY lists exactly N SERVING instances.
serving() { [ "$("$bin" status --discovery "$1" --json | grep -c SERVING)" = "$2" ]; }

# A free TCP port on 127.0.0.1 (for servers that cannot bind port 0 and report it, like haproxy).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# rotated N ITEM...: the items, starting at the (N mod count)-th: the order of the variants in round
# N. Each variant takes every place in turn, so none always runs first after a change of load
# (measured in bench/tracing.sh, 9 rounds: whichever variant ran first after the 1-in-flight rounds
# served ~7 % more calls/s at 16 in flight than it did in the other places).
rotated() {
  local n=$1
  shift
  local items=("$@") i
  for ((i = 0; i < ${#items[@]}; i++)); do
    printf '%s\n' "${items[$(((n + i) % ${#items[@]}))]}"
  done
}

# The worker-mode echo manifest of the tests (a pool of 2 Python workers), written to FILE.
echo_manifest() {
  sed -e "s|@FIXTURES@|$PWD/tests/fixtures/echo|g" -e "s|@MARKER@|bench|" tests/fixtures/echo/worker.toml >"$1"
}

# Reads one `exemesh bench --json` report on stdin and prints it as a line tagged with VARIANT and ROUND.
tag() {
  python3 -c "import json,sys; r=json.load(sys.stdin); r.update(variant='$1', round=$2); print(json.dumps(r))"
}

# Makes the repository's .venv (tests/python/requirements.txt: grpcio, grpcio-tools) if it is
# missing or incomplete, and sets $py to its Python. Call it from the repository root.
need_venv() {
  if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import grpc, grpc_tools' 2>/dev/null; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
  fi
  py=$PWD/.venv/bin/python
}

# ab_rounds ROUNDS SECS OUT NEW OLD PATH...: two settings side by side. In each round, at 1, 16 and
# 64 in flight, runs every PATH with setting NEW and PATH-OLD with setting OLD, in an order rotated
# from round to round, through the caller's `bench_path PATH SETTING ARGS...` (which prints one
# `exemesh bench --json` report), and appends the tagged reports to OUT (emptied first).
ab_rounds() {
  local rounds=$1 secs=$2 out=$3 new=$4 old=$5 round c variant setting
  shift 5
  local variants=() path
  for path in "$@"; do variants+=("$path" "$path-$old"); done
  mkdir -p "$(dirname "$out")"
  : >"$out"
  for round in $(seq 1 "$rounds"); do
    for c in 1 16 64; do
      for variant in $(rotated "$round" "${variants[@]}"); do
        setting=$new
        [ "${variant%-"$old"}" != "$variant" ] && setting=$old
        bench_path "${variant%-"$old"}" "$setting" -c "$c" -z "${secs}s" --warmup 500ms | tag "$variant" "$round" >>"$out"
      done
    done
  done
}

# Installs Debian's haproxy if it is missing.
need_haproxy() {
  command -v haproxy >/dev/null || { apt-get update -qq && apt-get install -y -qq haproxy >/dev/null; }
}

# haproxy_in_front NAME ADDR...: starts haproxy as an h2c proxy balancing round robin over the
# servers at ADDR..., on a free port that it puts in $haproxy_port (config: $work/haproxy-NAME.cfg).
haproxy_in_front() {
  local name=$1 i=0 addr
  shift
  haproxy_port=$(free_port)
  {
    cat <<CFG
global
  maxconn 4000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
frontend grpc
  bind 127.0.0.1:$haproxy_port proto h2
  default_backend replicas
backend replicas
  balance roundrobin
CFG
    for addr in "$@"; do
      i=$((i + 1))
      echo "  server r$i $addr proto h2"
    done
  } >"$work/haproxy-$name.cfg"
  haproxy -f "$work/haproxy-$name.cfg" -db >/dev/null 2>&1 &
  pids+=($!)
}
