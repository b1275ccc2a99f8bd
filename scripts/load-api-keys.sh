#!/usr/bin/env bash
# Load test of the control plane: API-key-authenticated `GET /v1/api-keys` at 64
# connections against a release build of `wrenn-cp`.
#
#   scripts/load-api-keys.sh [postgres|sqlite] [duration]     (defaults: postgres 20s)
#
# Needs: wrk (apt-get install wrk), curl, python3; for postgres a server at
# 127.0.0.1:5432 with trust auth for user postgres (a throw-away database is
# created and dropped). Only loopback is targeted.
#
# The database is on loopback, so the control plane connects without TLS
# (`sslmode=disable`); WRENN_LOAD_PG_SSLMODE=prefer measures the libpq default
# (TLS when the server offers it). WRENN_DB_MAX_CONNECTIONS passes through.
set -euo pipefail
cd "$(dirname "$0")/.."

backend=${1:-postgres}
duration=${2:-20s}
port=${WRENN_LOAD_PORT:-18080}
base="http://127.0.0.1:${port}"

command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install -y wrk" >&2; exit 1; }
cargo build --release --quiet -p wrenn-cpserver --bin wrenn-cp

dir=$(mktemp -d)
db=""
case "$backend" in
  postgres)
    db="wrenn_load_$$"
    psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE ${db}"
    url="postgres://postgres@127.0.0.1:5432/${db}?sslmode=${WRENN_LOAD_PG_SSLMODE:-disable}"
    ;;
  sqlite) url="sqlite://${dir}/wrenn.db" ;;
  *) echo "backend must be postgres or sqlite" >&2; exit 2 ;;
esac

cleanup() {
  [ -n "${cp_pid:-}" ] && kill "$cp_pid" 2>/dev/null && wait "$cp_pid" 2>/dev/null || true
  [ -n "$db" ] && psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS ${db}" || true
  rm -rf "$dir"
}
trap cleanup EXIT

WRENN_DIR="$dir" DATABASE_URL="$url" WRENN_CP_LISTEN_ADDR="127.0.0.1:${port}" RUST_LOG=warn \
  target/release/wrenn-cp >"$dir/cp.log" 2>&1 &
cp_pid=$!
for _ in $(seq 1 100); do curl -sf "$base/health" >/dev/null && break; sleep 0.1; done

# Seed an account: with no SMTP configured, sign-up activates at once.
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
curl -sf -X POST "$base/v1/auth/signup" -H 'content-type: application/json' \
  -d '{"email":"load@example.com","password":"load-test-password","name":"Load"}' >/dev/null
token=$(curl -sf -X POST "$base/v1/auth/login" -H 'content-type: application/json' \
  -d '{"email":"load@example.com","password":"load-test-password"}' | json "['token']")
for i in 1 2 3 4 5; do
  key=$(curl -sf -X POST "$base/v1/api-keys" -H "authorization: Bearer $token" \
    -H 'content-type: application/json' -d "{\"name\":\"load-$i\"}" | json "['key']")
done
curl -sf "$base/v1/api-keys" -H "x-api-key: $key" >/dev/null

echo "== wrenn-cp on ${backend}: GET /v1/api-keys with X-API-Key, 64 connections, ${duration}"
wrk -t2 -c64 -d"$duration" --latency -H "X-API-Key: ${key}" "$base/v1/api-keys"
