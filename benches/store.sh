#!/usr/bin/env bash
# The store benchmark: target/release/mercator on SQLite (a file under a fresh data dir) and on PostgreSQL
# (a fresh database on 127.0.0.1:5432), each bulk-ingesting ROWS price observations over HTTP by CSV and
# then answering list and range queries on them (benches/src/bin/store.rs). Prints one JSON line each.
# SCORING=1 instead: SQLite with the shipped models, ingest with anomaly scoring on and off in one run (the
# cost of --score-on-ingest). ALERTS=1 instead: SQLite, ingest with no alert rules and with 1,000 (every
# price evaluated: --alert-max-age-days covers the bench's dates).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
ROWS="${ROWS:-1000000}"
PG="${MERCATOR_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432}"
out="$root/benches/out"
mkdir -p "$out"
target="${CARGO_TARGET_DIR:-$root/target}"
scripts/install-runtime.sh
# MERCATOR_BIN: a mercator binary built elsewhere (an older commit, to compare in one session); BENCH_STORE
# likewise for the client. BACKENDS: which stores to run (default both).
mercator_bin="${MERCATOR_BIN:-$target/release/mercator}"
bench_store="${BENCH_STORE:-$target/release/bench-store}"
[ -n "${MERCATOR_BIN:-}" ] || cargo build --release --quiet --bin mercator --bin bench-store
BACKENDS="${BACKENDS:-sqlite postgres}"
key="mk_benchadmin_0123456789abcdef0123456789abcdef"
empty_models="$out/no-models"; mkdir -p "$empty_models"

run() {  # label, database url or "", models dir, more flags
  local data="$out/store-$1"; rm -rf "$data"
  local url_flag=(); [ -n "$2" ] && url_flag=(--database-url "$2")
  RUST_LOG=warn MERCATOR_ADMIN_KEY="$key" "$mercator_bin" serve --addr 127.0.0.1:8104 \
    --data-dir "$data" --models-dir "$3" --max-bulk-body-bytes 268435456 "${url_flag[@]}" "${@:4}" &
  local pid=$!
  for _ in $(seq 1 300); do curl -sf -o /dev/null http://127.0.0.1:8104/readyz && break; sleep 0.1; done
  echo "## $1"
  "$bench_store" http://127.0.0.1:8104 "$key" "$ROWS" "${RULES:-0}" | tee -a "$out/store.jsonl"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

: > "$out/store.jsonl"
if [ "${ALERTS:-0}" = 1 ]; then
  RULES=0 run sqlite-no-rules "" "$empty_models" --alert-max-age-days 100000
  RULES=1000 run sqlite-1000-rules "" "$empty_models" --alert-max-age-days 100000
  exit 0
fi
if [ "${SCORING:-0}" = 1 ]; then
  run sqlite-scoring "" "$root/models" --score-on-ingest true
  run sqlite-no-scoring "" "$root/models" --score-on-ingest false
  exit 0
fi
for backend in $BACKENDS; do
  case $backend in
    sqlite) run sqlite "" "$empty_models" ;;
    postgres)
      psql "$PG/test" -qc "DROP DATABASE IF EXISTS mercator_bench WITH (FORCE)" -c "CREATE DATABASE mercator_bench"
      run postgres "$PG/mercator_bench" "$empty_models"
      psql "$PG/test" -qc "DROP DATABASE IF EXISTS mercator_bench WITH (FORCE)" ;;
  esac
done
