#!/usr/bin/env bash
# End-to-end price predictions under load: POST /api/v1/predictions/price (feature row from the in-memory
# history, the price model through its batching queue, the interval) with wrk on loopback, against the
# axum echo of the same request (the ceiling), in one run. The fixture history (43,678 prices) is ingested
# through the bulk API first.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
DURATION="${DURATION:-15}"
CONCURRENCY="${CONCURRENCY:-1 64}"
out="$root/benches/out"
mkdir -p "$out"
target="${CARGO_TARGET_DIR:-$root/target}"
if ! command -v wrk >/dev/null; then
  echo "installing wrk"; apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
scripts/install-runtime.sh
# MERCATOR_BIN: a mercator binary built elsewhere (an older commit, to compare before and after in one
# session); the baselines still come from this checkout.
mercator_bin="${MERCATOR_BIN:-$target/release/mercator}"
if [ -z "${MERCATOR_BIN:-}" ] || [ ! -x "$target/release/bench-echo" ]; then
  cargo build --release --quiet --bin mercator --bin bench-echo
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
export API_KEY="mk_benchadmin_0123456789abcdef0123456789abcdef"
rm -rf "$out/predict-data"
"$target/release/bench-echo" 127.0.0.1:8111 & pids+=($!); echo_pid=$!
RUST_LOG=warn MERCATOR_ADMIN_KEY="$API_KEY" "$mercator_bin" serve --addr 127.0.0.1:8113 \
  --data-dir "$out/predict-data" & pids+=($!); mercator_pid=$!
for _ in $(seq 1 300); do
  curl -sf http://127.0.0.1:8113/readyz >/dev/null && break; sleep 0.1
done

# Materials, suppliers and the fixture's prices, through the API; the request body for ALU-001.
python3 benches/fixture.py http://127.0.0.1:8113 "$out/predict-ids.json" "$out/predict-row.json"
curl -sf -H "authorization: Bearer $API_KEY" -H 'content-type: application/json' \
  --data-binary @"$out/predict-row.json" http://127.0.0.1:8113/api/v1/predictions/price | head -c 300; echo

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
results="$out/${RESULTS_NAME:-predictions}.jsonl"
: > "$results"
for c in $CONCURRENCY; do
  threads=$(( c < 2 ? 1 : 2 ))
  for server in echo mercator; do
    case $server in echo) port=8111 pid=$echo_pid;; mercator) port=8113 pid=$mercator_pid;; esac
    line=$(BODY_FILE="$out/predict-row.json" wrk -t"$threads" -c"$c" -d"${DURATION}s" --timeout 5s -s benches/post.lua \
      "http://127.0.0.1:$port/api/v1/predictions/price" | tail -n 1)
    echo "{\"server\":\"$server\",\"concurrency\":$c,\"rss_kib\":$(rss_kib "$pid"),\"result\":$line}" | tee -a "$results"
  done
done
