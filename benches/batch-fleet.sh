#!/usr/bin/env bash
# A 1,000,000-row price job on one replica, then on two replicas sharing it, on one fresh PostgreSQL
# database and one machine: what claiming chunks from the store, leases and commits in PostgreSQL cost,
# and how the chunks split between the replicas. On two cores two replicas cannot be faster than one (the
# job is CPU-bound); the ratio says what running it across replicas costs. ROUNDS jobs of each; JSON lines
# in benches/out/batch-fleet.jsonl.
# MERCATOR_BIN: a mercator binary built elsewhere. STORE=sqlite: one replica on its own SQLite file instead
# (the single-node default), ROUNDS jobs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
ROWS="${ROWS:-1000000}"
ROUNDS="${ROUNDS:-2}"
STORE="${STORE:-postgres}"
PG="${MERCATOR_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432}"
out="$root/benches/out"
mkdir -p "$out"
target="${CARGO_TARGET_DIR:-$root/target}"
scripts/install-runtime.sh
mercator_bin="${MERCATOR_BIN:-$target/release/mercator}"
[ -n "${MERCATOR_BIN:-}" ] || cargo build --release --quiet --bin mercator
db="mercator_bench_batch_$$"
psql -q "$PG/test" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
export API_KEY="mk_benchadmin_0123456789abcdef0123456789abcdef"
secret="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true
  psql -q "$PG/test" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  rm -rf "$out/batch-fleet-a" "$out/batch-fleet-b"
}
trap cleanup EXIT
start() {
  local r=$1 port=$2
  rm -rf "$out/batch-fleet-$r"
  local store=(--database-url "$PG/$db")
  [ "$STORE" = sqlite ] && store=()
  RUST_LOG=warn MERCATOR_ADMIN_KEY="$API_KEY" MERCATOR_SECRET_KEY="$secret" "$mercator_bin" serve \
    --addr "127.0.0.1:$port" --data-dir "$out/batch-fleet-$r" --models-dir models "${store[@]}" &
  pids+=($!)
  for _ in $(seq 1 300); do curl -sf -o /dev/null "http://127.0.0.1:$port/readyz" && break; sleep 0.1; done
}
a=http://127.0.0.1:8121
start a 8121
python3 benches/fixture.py "$a" "$out/batch-fleet-ids.json"
"$mercator_bin" features materialize --spec models/price/2/features.toml --input fixtures/prices.csv \
  --output "$out/batch-frame.csv"
python3 benches/batch_requests.py "$out/batch-fleet-ids.json" "$out/batch-frame.csv" "$out" "$ROWS"

committed() {
  curl -sf "$1/metrics" | awk '/^mercator_batch_chunks_total/ && /committed/ {s += $NF} END {print s + 0}'
}
job() {
  local id state j
  id=$(curl -sf -H "authorization: Bearer $API_KEY" -H 'content-type: text/csv' -H 'prefer: respond-async' \
    --data-binary @"$out/batch-$ROWS.csv" "$a/api/v1/predictions/batch" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["batch_id"])')
  while :; do
    j=$(curl -sf -H "authorization: Bearer $API_KEY" "$a/api/v1/predictions/batch/$id")
    case "$j" in *'"state":"succeeded"'*|*'"state":"failed"'*|*'"state":"cancelled"'*) break;; esac
    sleep 0.2
  done
  echo "$j"
}
round() {
  local replicas=$1 before_a before_b j
  before_a=$(committed "$a"); before_b=$( [ "$replicas" = 2 ] && committed http://127.0.0.1:8122 || echo 0)
  j=$(job)
  python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print(json.dumps({"store": sys.argv[7], "replicas": int(sys.argv[2]), "rows": j["total_rows"], "state": j["state"], "rows_per_sec": round(j["rows_per_sec"]), "attempts": j["attempts"], "chunks": j["chunks_total"], "chunks_by_a": float(sys.argv[3]) - float(sys.argv[4]), "chunks_by_b": float(sys.argv[5]) - float(sys.argv[6])}))' \
    "$j" "$replicas" "$(committed "$a")" "$before_a" \
    "$( [ "$replicas" = 2 ] && committed http://127.0.0.1:8122 || echo 0)" "$before_b" "$STORE" \
    | tee -a "$out/batch-fleet.jsonl"
}
for _ in $(seq 1 "$ROUNDS"); do round 1; done
[ "$STORE" = sqlite ] && exit 0
start b 8122
sleep 2
for _ in $(seq 1 "$ROUNDS"); do round 2; done
