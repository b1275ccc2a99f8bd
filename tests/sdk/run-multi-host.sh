#!/usr/bin/env bash
# The SDK suite against a multi-host deployment (see tests/sdk/multi_host.py): wrenn-cp
# on PostgreSQL and Redis Streams, two wrenn-agent hosts registered with one-time
# tokens. Needs WRENN_TEST_POSTGRES_URL and WRENN_TEST_REDIS_URL.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/sdk/venv.sh
: "${WRENN_TEST_POSTGRES_URL:?the multi-host deployment runs on PostgreSQL}"
: "${WRENN_TEST_REDIS_URL:?the multi-host deployment runs on Redis}"
cargo build -q -p wrenn-cpserver -p wrenn-agent -p wrenn-envd --bins
export WRENN_IMAGE_CACHE="${WRENN_IMAGE_CACHE:-/var/cache/wrenn/test-images}"
exec "$venv/bin/python" tests/sdk/multi_host.py "$@"
