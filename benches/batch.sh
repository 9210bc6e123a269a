#!/usr/bin/env bash
# Batch jobs: rows/s of 100,000- and 1,000,000-row price jobs (CSV in, features + inference + results
# committed) against the raw ONNX Runtime ceiling of the same model on both cores (bench-ort-ceiling), peak
# RSS of the server during each job, and interactive p50/p99 (wrk on POST /api/v1/predictions/price) with
# and without a 1,000,000-row job running. One run, one machine; JSON lines in benches/out/batch.jsonl.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
DURATION="${DURATION:-10}"
CONCURRENCY="${CONCURRENCY:-1 8}"
out="$root/benches/out"
mkdir -p "$out"
target="${CARGO_TARGET_DIR:-$root/target}"
if ! command -v wrk >/dev/null; then
  echo "installing wrk"; apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
scripts/install-runtime.sh
cargo build --release --quiet --bin mercator --bin bench-ort-ceiling

results="$out/batch.jsonl"
: > "$results"
# The price model's feature rows of the fixture, computed by the serving code: the ceiling runs them, and the
# jobs ask for the same purchases, so both cover the same 42,091 distinct rows.
"$target/release/mercator" features materialize --spec models/price/2/features.toml \
  --input fixtures/prices.csv --output "$out/batch-frame.csv"
ceiling=$("$target/release/bench-ort-ceiling" 2 256 "$DURATION" "$out/batch-frame.csv")
echo "{\"ceiling\":$ceiling}" | tee -a "$results"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
export API_KEY="mk_benchadmin_0123456789abcdef0123456789abcdef"
port=8115
base="http://127.0.0.1:$port"
rm -rf "$out/batch-data"
RUST_LOG=warn MERCATOR_ADMIN_KEY="$API_KEY" "$target/release/mercator" serve --addr 127.0.0.1:$port \
  --data-dir "$out/batch-data" & pids+=($!); mercator_pid=$!
for _ in $(seq 1 300); do
  curl -sf "$base/readyz" >/dev/null && break; sleep 0.1
done
python3 benches/fixture.py "$base" "$out/batch-ids.json" "$out/predict-row.json"

python3 benches/batch_requests.py "$out/batch-ids.json" "$out/batch-frame.csv" "$out" 100000 1000000

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
submit() {
  curl -sf -H "authorization: Bearer $API_KEY" -H 'content-type: text/csv' -H 'prefer: respond-async' \
    --data-binary @"$1" "$base/api/v1/predictions/batch" | python3 -c 'import json,sys; print(json.load(sys.stdin)["batch_id"])'
}
state() { curl -sf -H "authorization: Bearer $API_KEY" "$base/api/v1/predictions/batch/$1"; }
# Waits for the job to end, sampling the server's RSS; prints the job and the peak as one JSON line.
follow() {
  local id=$1 peak=0 rss job
  while :; do
    rss=$(rss_kib "$mercator_pid"); (( rss > peak )) && peak=$rss
    job=$(state "$id")
    case "$job" in *'"state":"succeeded"'*|*'"state":"failed"'*|*'"state":"cancelled"'*) break;; esac
    sleep 0.2
  done
  python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print(json.dumps({"rows": j["total_rows"], "state": j["state"], "failed_rows": j["failed_rows"], "rows_per_sec": round(j["rows_per_sec"]), "peak_rss_kib": int(sys.argv[2]), "started_at": j["started_at"], "finished_at": j["finished_at"]}))' "$job" "$peak"
}

idle_rss=$(rss_kib "$mercator_pid")
echo "{\"idle_rss_kib\":$idle_rss}" | tee -a "$results"
for rows in 100000 1000000; do
  id=$(submit "$out/batch-$rows.csv")
  echo "{\"job\":$(follow "$id")}" | tee -a "$results"
done

# Interactive latency alone, then with a 1,000,000-row job running beside it, at each concurrency (c=1 leaves
# a core to the job; c=8 saturates both). wrk runs for less time than a 1,000,000-row job takes, so every
# request it sends meets the job; the job's rows committed while wrk ran say what it got meanwhile.
WRK_SECONDS="${WRK_SECONDS:-4}"
wrk_run() {
  BODY_FILE="$out/predict-row.json" wrk -t"$(( $1 < 2 ? $1 : 2 ))" -c"$1" -d"${WRK_SECONDS}s" --timeout 5s -s benches/post.lua \
    "$base/api/v1/predictions/price" | tail -n 1
}
for c in $CONCURRENCY; do
  echo "{\"interactive\":\"alone\",\"concurrency\":$c,\"result\":$(wrk_run "$c")}" | tee -a "$results"
  id=$(submit "$out/batch-1000000.csv")
  sleep 0.5
  before=$(state "$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["processed_rows"])')
  line=$(wrk_run "$c")
  during=$(state "$id" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(json.dumps({"state": j["state"], "processed_rows": j["processed_rows"]}))')
  echo "{\"interactive\":\"with a job\",\"concurrency\":$c,\"result\":$line,\"job_rows_before_wrk\":$before,\"job_when_wrk_ended\":$during}" | tee -a "$results"
  echo "{\"job_beside_interactive\":$(follow "$id")}" | tee -a "$results"
done
