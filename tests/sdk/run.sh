#!/usr/bin/env bash
# Drives `wrenn dev` with the published Python SDK (wrenn 0.3.0, unchanged).
# Creates a venv under target/sdk-venv, builds `wrenn`, starts `wrenn dev` in a
# temporary directory on a free loopback port, and runs tests/sdk/test_sdk.py.
set -euo pipefail
cd "$(dirname "$0")/../.."

source tests/sdk/venv.sh

# WRENN_BIN: a prebuilt `wrenn` to test instead of building one.
if [ -z "${WRENN_BIN:-}" ]; then cargo build -q -p wrenn --bin wrenn; fi
wrenn="${WRENN_BIN:-${CARGO_TARGET_DIR:-target}/debug/wrenn}"
# The default image, built once per machine and shared (see README: WRENN_IMAGE_CACHE).
export WRENN_IMAGE_CACHE="${WRENN_IMAGE_CACHE:-/var/cache/wrenn/test-images}"
# With VMs (WRENN_RUNTIME=qemu) the first create after start waits for the warm
# snapshot the agent boots at start (seconds under TCG, more on a loaded machine):
# let create answer when the capsule runs, as the SDK tests expect, however long that is.
if [ "${WRENN_RUNTIME:-process}" != process ]; then
  export WRENN_CREATE_WAIT_MS="${WRENN_CREATE_WAIT_MS:-60000}"
fi
dir=$(mktemp -d)
"$wrenn" image build --dir "$dir/state"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Where this machine's egress re-signs TLS with a local CA, the shipped code-runner
# template's build (pip install from PyPI inside a capsule) must trust it too.
if [ -z "${WRENN_DEV_TEMPLATE_CA:-}" ] && compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
  cat /usr/local/share/ca-certificates/*.crt >"$dir/extra-ca.pem"
  export WRENN_DEV_TEMPLATE_CA="$dir/extra-ca.pem"
fi
"$wrenn" dev --dir "$dir/state" --listen "127.0.0.1:$port" >"$dir/out.log" 2>"$dir/err.log" &
pid=$!
cleanup() { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
for _ in $(seq 1 300); do grep -q '^export WRENN_API_KEY' "$dir/out.log" 2>/dev/null && break; sleep 0.1; done
if ! grep -q '^export WRENN_API_KEY' "$dir/out.log"; then
  echo "wrenn dev did not start:"; cat "$dir/err.log"; exit 1
fi
eval "$(grep '^export' "$dir/out.log")"
# The development admin's credentials: the code_runner tests follow the build of the
# shipped code-runner-beta template through the admin builds API.
export WRENN_DEV_CREDENTIALS="$dir/state/dev-credentials.json"
# Firecracker needs KVM that boots guests; where it does not, `wrenn dev` says so and
# every create would fail: the suite stops here with that reason.
if [ "${WRENN_RUNTIME:-process}" = firecracker ] && grep -q 'KVM does not boot guests' "$dir/err.log"; then
  echo "SKIPPED the SDK suite on WRENN_RUNTIME=firecracker: $(grep -o 'KVM does not boot guests on this host ([^)]*)' "$dir/err.log" | head -n1)"
  exit 0
fi
status=0
"$venv/bin/pytest" -q tests/sdk/test_sdk.py tests/sdk/test_environment.py tests/sdk/test_capsule_urls.py "$@" || status=$?
if [ "$status" != 0 ]; then
  echo "--- wrenn dev warnings and errors (last 40)"
  grep -E ' (WARN|ERROR) ' "$dir/err.log" | tail -40 || true
  echo "--- panics"
  grep -A4 'panicked at' "$dir/err.log" | head -40 || true
  echo "--- wrenn dev log (tail)"
  tail -50 "$dir/err.log"
fi
exit "$status"
