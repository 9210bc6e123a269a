#!/usr/bin/env bash
# What a cache would save: the latency of the answers a cache could hold (a price, a forecast, a trend, a
# model's registry view), computed by target/release/mercator from the fixture's history, at c=1 with wrk,
# beside a Redis GET of a value that size on loopback (what a shared cache's hit costs before any work).
# Prints one JSON line per measurement, appended to benches/out/caches.jsonl.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
DURATION="${DURATION:-8}"
out="$root/benches/out"
mkdir -p "$out"
target="${CARGO_TARGET_DIR:-$root/target}"
if ! command -v wrk >/dev/null; then
  echo "installing wrk"; apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
scripts/install-runtime.sh
mercator_bin="${MERCATOR_BIN:-$target/release/mercator}"
[ -x "$mercator_bin" ] || cargo build --release --quiet --bin mercator
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
export API_KEY="mk_benchadmin_0123456789abcdef0123456789abcdef"
rm -rf "$out/caches-data"
RUST_LOG=warn MERCATOR_ADMIN_KEY="$API_KEY" "$mercator_bin" serve --addr 127.0.0.1:8115 \
  --data-dir "$out/caches-data" --models-dir models & pids+=($!)
for _ in $(seq 1 300); do curl -sf http://127.0.0.1:8115/readyz >/dev/null && break; sleep 0.1; done
python3 benches/fixture.py http://127.0.0.1:8115 "$out/caches-ids.json" "$out/caches-price.json"
material=$(python3 -c "import json; print(json.load(open('$out/caches-ids.json'))['materials']['ALU-001'])")
echo "{\"material_id\": \"$material\", \"horizon_days\": 28, \"as_of\": \"2025-06-02\"}" > "$out/caches-forecast.json"
echo "{\"material_id\": \"$material\", \"window_days\": 90, \"as_of\": \"2025-06-02\"}" > "$out/caches-trend.json"
results="$out/caches.jsonl"
measure() {  # name, method, path, body file or ""
  local size line
  if [ "$2" = POST ]; then
    size=$(curl -sf -H "authorization: Bearer $API_KEY" -H 'content-type: application/json' \
      --data-binary @"$4" "http://127.0.0.1:8115$3" | wc -c)
    line=$(BODY_FILE="$4" wrk -t1 -c1 -d"${DURATION}s" -s benches/post.lua "http://127.0.0.1:8115$3" | tail -n 1)
  else
    size=$(curl -sf -H "authorization: Bearer $API_KEY" "http://127.0.0.1:8115$3" | wc -c)
    line=$(wrk -t1 -c1 -d"${DURATION}s" -s benches/post.lua "http://127.0.0.1:8115$3" | tail -n 1)
  fi
  echo "{\"answer\":\"$1\",\"bytes\":$size,\"result\":$line}" | tee -a "$results"
}
measure price POST /api/v1/predictions/price "$out/caches-price.json"
measure forecast POST /api/v1/analytics/forecast "$out/caches-forecast.json"
measure trend POST /api/v1/analytics/trends "$out/caches-trend.json"
measure model_view GET /api/v1/models/price ""
# A shared cache's hit before any work: a GET of a 4 KiB value (SET first), one client, on loopback.
redis-benchmark -c 1 -n 50000 -d 4096 -t set,get --csv | tail -n 1 | tee -a "$results"
