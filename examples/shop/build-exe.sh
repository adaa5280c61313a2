#!/usr/bin/env bash
# Build shop.py into a standalone executable with PyInstaller, bundling the
# vendored exemesh_worker helper (sdk/python), so that it runs on machines
# without Python.
#
#   ./build-exe.sh              # --onedir (recommended): dist/shop/shop
#   ./build-exe.sh --onefile    # one self-extracting file: dist/shop-onefile
#
# A --onedir build starts in ~35 ms, a --onefile build in ~210 ms (it unpacks
# itself into a temporary directory on every start), which matters for
# mode = "spawn", where every call starts the program.
#
# Environment: PYTHON (default python3) creates the build venv, .venv-build.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

mode=onedir
case "${1:-}" in
  "" | --onedir) mode=onedir ;;
  --onefile) mode=onefile ;;
  -h | --help)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "usage: $0 [--onedir|--onefile]" >&2
    exit 64
    ;;
esac

python="${PYTHON:-python3}"
venv="$here/.venv-build"
sdk="$(cd "$here/../../sdk/python" && pwd)"

if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv" >&2
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check pyinstaller==6.22.0

if [ "$mode" = onedir ]; then
  name=shop
  out="dist/shop/shop"
  rm -rf dist/shop
else
  name=shop-onefile
  out="dist/shop-onefile"
  rm -f dist/shop-onefile
fi

# --paths makes the vendored helper importable for the analysis, and
# --hidden-import makes sure it is bundled even though shop.py imports it
# lazily (only in worker mode). The spec file and the work files go to build/.
"$venv/bin/python" -m PyInstaller \
  --noconfirm --clean --log-level WARN \
  "--$mode" \
  --name "$name" \
  --paths "$sdk" \
  --hidden-import exemesh_worker \
  --distpath "$here/dist" \
  --workpath "$here/build" \
  --specpath "$here/build" \
  "$here/shop.py"

# Smoke test: the CLI and the worker's ready frame.
"./$out" product get --id p1 > /dev/null
ready="$(printf '' | "./$out" worker | head -n 1)"
case "$ready" in
  '{"ready":'*) ;;
  *)
    echo "build-exe.sh: $out worker did not send a ready frame: $ready" >&2
    exit 1
    ;;
esac
echo "built $here/$out"
