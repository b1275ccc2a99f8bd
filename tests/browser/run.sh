#!/usr/bin/env bash
# The web dashboard in a real headless browser: Debian's chromium driven by Playwright
# for Python (no browser download), against `wrenn dev`.
# Creates a venv under target/browser-venv, builds `wrenn`, starts `wrenn dev` in a
# temporary directory on a free loopback port and runs tests/browser/test_dashboard.py.
# Screenshots of failed tests land in target/browser-screenshots/.
set -euo pipefail
cd "$(dirname "$0")/../.."

chromium="${WRENN_CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$chromium" ]; then
  echo "no Chromium at $chromium: apt-get install chromium (or set WRENN_CHROMIUM)" >&2
  exit 1
fi
export WRENN_CHROMIUM="$chromium"

venv=target/browser-venv
if [ ! -x "$venv/bin/pytest" ] || ! "$venv/bin/python" -c 'import playwright' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q playwright==1.63.0 pytest
fi

# WRENN_BIN: a prebuilt `wrenn` to test instead of building one.
if [ -z "${WRENN_BIN:-}" ]; then cargo build -q -p wrenn --bin wrenn; fi
wrenn="${WRENN_BIN:-${CARGO_TARGET_DIR:-target}/debug/wrenn}"
export WRENN_IMAGE_CACHE="${WRENN_IMAGE_CACHE:-/var/cache/wrenn/test-images}"
# The shipped template builds are not what these tests look at.
export WRENN_DEV_BUILD_TEMPLATES=0
dir=$(mktemp -d)
"$wrenn" image build --dir "$dir/state"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$wrenn" dev --dir "$dir/state" --listen "127.0.0.1:$port" >"$dir/out.log" 2>"$dir/err.log" &
pid=$!
cleanup() { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
for _ in $(seq 1 300); do grep -q '^export WRENN_API_KEY' "$dir/out.log" 2>/dev/null && break; sleep 0.1; done
if ! grep -q '^export WRENN_API_KEY' "$dir/out.log"; then
  echo "wrenn dev did not start:"; cat "$dir/err.log"; exit 1
fi
eval "$(grep '^export' "$dir/out.log")"
export WRENN_DEV_CREDENTIALS="$dir/state/dev-credentials.json"
export WRENN_SCREENSHOTS="$PWD/target/browser-screenshots"
status=0
"$venv/bin/pytest" -q tests/browser/test_dashboard.py "$@" || status=$?
if [ "$status" != 0 ]; then
  echo "--- screenshots of failed tests in $WRENN_SCREENSHOTS"
  ls "$WRENN_SCREENSHOTS" 2>/dev/null || true
  echo "--- wrenn dev warnings and errors (last 40)"
  grep -E ' (WARN|ERROR) ' "$dir/err.log" | tail -40 || true
fi
exit "$status"
