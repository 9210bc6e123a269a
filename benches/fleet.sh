#!/usr/bin/env bash
# The fleet benchmark: two replicas of target/release/mercator on one fresh PostgreSQL database and Redis
# (a prefix of their own), and bench-fleet between them: how long an activation, a price and a rule made
# on A take to reach B, and a price event to reach B's /ws/prices (p50/p99 over N each). Prints one JSON
# line, appended to benches/out/fleet.jsonl.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
N="${N:-200}"
PG="${MERCATOR_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432}"
out="$root/benches/out"
mkdir -p "$out"
target="${CARGO_TARGET_DIR:-$root/target}"
scripts/install-runtime.sh
cargo build --release --quiet --bin mercator --bin bench-fleet
db="mercator_bench_fleet_$$"
psql -q "$PG/test" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
key="mk_benchadmin_0123456789abcdef0123456789abcdef"
secret="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true
  psql -q "$PG/test" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  rm -rf "$out/fleet-a" "$out/fleet-b"
}
trap cleanup EXIT
for r in a b; do
  port=$([ "$r" = a ] && echo 8111 || echo 8112)
  rm -rf "$out/fleet-$r"
  RUST_LOG=warn MERCATOR_ADMIN_KEY="$key" MERCATOR_SECRET_KEY="$secret" "$target/release/mercator" serve \
    --addr "127.0.0.1:$port" --data-dir "$out/fleet-$r" --models-dir models --database-url "$PG/$db" \
    --redis-url redis://127.0.0.1:6379/0 --redis-key-prefix "bench-fleet-$$" &
  pids+=($!)
  for _ in $(seq 1 300); do curl -sf -o /dev/null "http://127.0.0.1:$port/readyz" && break; sleep 0.1; done
done
"$target/release/bench-fleet" http://127.0.0.1:8111 http://127.0.0.1:8112 "$key" "$N" | tee -a "$out/fleet.jsonl"
