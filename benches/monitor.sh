#!/usr/bin/env bash
# What model monitoring costs: one mercator binary with monitoring on (the default: every batch of a
# monitored version copied to the monitor, 5% of price predictions logged) and off (--monitor false),
# alternated ROUNDS times (the order flipped each round), a fresh server each time, wrk at c=$CONCURRENCY for $DURATION s on
#   v2   - single-row V2 inference on price v2 (27 features, monitored),
#   rest - POST /api/v1/predictions/price on the fixture's history (price v2 behind it),
# then the server's RSS and, with monitoring on, the size of a stored bucket of counts. Prints the medians
# and the on/off ratios (benches/RESULTS.md).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
CONCURRENCY="${CONCURRENCY:-64}"
out="$root/benches/out"
mkdir -p "$out"
target="${CARGO_TARGET_DIR:-$root/target}"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
scripts/install-runtime.sh
mercator_bin="${MERCATOR_BIN:-$target/release/mercator}"
[ -n "${MERCATOR_BIN:-}" ] || cargo build --release --quiet --bin mercator

python3 - "$out/price-v2-row.json" <<'PY'
import json, sys
g = json.load(open("fixtures/golden/price-v2.json"))["inputs"][0]
json.dump({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 27], "data": g["data"][:27]}]},
          open(sys.argv[1], "w"))
PY

export API_KEY="mk_benchadmin_0123456789abcdef0123456789abcdef"
results="$out/monitor.jsonl"
: > "$results"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
port=8121
for round in $(seq 1 "$ROUNDS"); do
  # The order flips each round, so neither mode always runs first.
  order="on off"; [ $((round % 2)) = 0 ] && order="off on"
  for mode in $order; do
    data="$out/monitor-data-$mode"
    rm -rf "$data"
    monitor=$([ "$mode" = on ] && echo true || echo false)
    RUST_LOG=warn MERCATOR_ADMIN_KEY="$API_KEY" "$mercator_bin" serve --addr "127.0.0.1:$port" \
      --data-dir "$data" --monitor "$monitor" & pid=$!
    for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
    python3 benches/fixture.py "http://127.0.0.1:$port" "$out/monitor-ids.json" "$out/monitor-row.json" >/dev/null
    for bench in v2 rest; do
      case $bench in
        v2) body="$out/price-v2-row.json" path="/v2/models/price/versions/2/infer";;
        rest) body="$out/monitor-row.json" path="/api/v1/predictions/price";;
      esac
      BODY_FILE="$body" wrk -t2 -c"$CONCURRENCY" -d2s -s benches/post.lua "http://127.0.0.1:$port$path" >/dev/null
      line=$(BODY_FILE="$body" wrk -t2 -c"$CONCURRENCY" -d"${DURATION}s" --timeout 5s -s benches/post.lua \
        "http://127.0.0.1:$port$path" | tail -n 1)
      echo "{\"mode\":\"$mode\",\"round\":$round,\"bench\":\"$bench\",\"rss_kib\":$(rss_kib "$pid"),\"result\":$line}" | tee -a "$results"
    done
    if [ "$mode" = on ]; then
      sleep 11  # one flush period: the counts reach the store
      python3 - "$data/mercator.db" <<'PY' | tee -a "$results"
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rows = db.execute("SELECT model, version, COUNT(*), AVG(LENGTH(counts)), MAX(LENGTH(counts)) FROM monitor_counts GROUP BY model, version").fetchall()
logged = db.execute("SELECT COUNT(*) FROM prediction_log").fetchone()[0]
print(json.dumps({"stored_buckets": [{"model": m, "version": v, "rows": n, "avg_bytes": round(a), "max_bytes": x} for m, v, n, a, x in rows], "logged_predictions": logged}))
PY
    fi
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  done
done

python3 - "$results" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if '"mode"' in l]
print(f"{'bench':6} {'mode':4} {'req/s (median)':>15} {'p50 us':>8} {'p99 us':>8} {'rss MiB':>8}")
med = {}
for bench in ("v2", "rest"):
    for mode in ("on", "off"):
        rs = [r for r in runs if r["bench"] == bench and r["mode"] == mode]
        rate = statistics.median(r["result"]["requests"] / (r["result"]["duration_us"] / 1e6) for r in rs)
        med[bench, mode] = rate
        p50 = statistics.median(r["result"]["p50_us"] for r in rs)
        p99 = statistics.median(r["result"]["p99_us"] for r in rs)
        rss = statistics.median(r["rss_kib"] for r in rs) / 1024
        errors = sum(r["result"]["errors"] for r in rs)
        print(f"{bench:6} {mode:4} {rate:15.0f} {p50:8.0f} {p99:8.0f} {rss:8.1f}" + (f"  errors {errors}" if errors else ""))
    print(f"{bench}: monitoring on / off = {med[bench, 'on'] / med[bench, 'off']:.3f}")
PY
