#!/usr/bin/env bash
# The intake statement alone under pgbench: how many webhook events a second this PostgreSQL
# can take in, at 1, 8 and 64 clients, with the real schema (migrations applied by the
# binary). Usage: bash benches/intake_pgbench.sh [admin URL] [seconds per run]
set -euo pipefail
cd "$(dirname "$0")/.."
ADMIN_URL="${1:-postgres://postgres@127.0.0.1:5432/postgres}"
SECONDS_PER_RUN="${2:-20}"
DB="nexus_pgbench_$$"
psql "$ADMIN_URL" -qc "CREATE DATABASE \"$DB\""
trap 'psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)"' EXIT
DB_URL="${ADMIN_URL%/*}/$DB"
cargo run --quiet --release -- --database-url="$DB_URL" migrate
echo "| clients | transactions/s | mean latency ms |"
echo "|---:|---:|---:|"
for clients in 1 8 64; do
  out=$(pgbench -n -c "$clients" -j 2 -T "$SECONDS_PER_RUN" -f benches/intake_statement.sql "$DB_URL" 2>&1)
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
  lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
  echo "| $clients | $tps | $lat |"
done
