#!/usr/bin/env bash
# The fault soak (scripts/soak/soak.py): builds the binaries, then runs it on a cluster of
# two control-plane replicas and three agents (scripts/soak/cluster.py). Arguments go to
# soak.py: `scripts/soak.sh --ops 1000` is the long run, `--ops 200` the one CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/sdk/venv.sh
cargo build -q -p wrenn-cpserver -p wrenn-agent -p wrenn-envd --bins
export WRENN_IMAGE_CACHE="${WRENN_IMAGE_CACHE:-/var/cache/wrenn/test-images}"
exec "$venv/bin/python" scripts/soak/soak.py "$@"
