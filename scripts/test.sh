#!/usr/bin/env bash
# Sets up and runs every test of exemesh on a fresh machine (Rust 1.95 + cargo-nextest, Python 3.11):
#   - Rust unit, property and integration tests (the real binary, real executables, 127.0.0.1 only);
#   - the Python worker helper's and the shop example's own tests;
#   - third-party clients against the real binary: Python grpcio and grpcurl;
#   - the etcd discovery backend against a real etcd (Debian's etcd-server, installed here).
# Python packages go into .venv (created here). Run from anywhere: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# A real etcd for the etcd discovery tests (Debian's etcd-server; needs root, as on CI).
if ! command -v etcd >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt

cargo build --locked --workspace
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --workspace
else
  cargo test --locked --workspace
fi
cargo test --locked --doc

# Separate runs: the example's tests import shop.py as `shop`, the client tests import the generated
# `shop.v1` stubs.
export EXEMESH_BIN="$PWD/target/debug/exemesh"
.venv/bin/python -m pytest -q tests/python
.venv/bin/python -m pytest -q sdk/python/tests
.venv/bin/python -m pytest -q examples/shop/tests
