#!/usr/bin/env bash
# What sourcing costs: an RFQ of $LINES lines (the fixture's 40 materials in turn, quantities varying) to
# its 10 suppliers on a release server with the shipped models and the fixture's history. Each supplier
# quotes every line (one POST per quote: every line benchmarked through the price model, scored, written
# as a price observation and judged by the alert rules); then the comparison (JSON and CSV) is read
# $READS times. Prints lines/s per quote (median of the 10) and the comparison's median time
# (benches/RESULTS.md).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
LINES="${LINES:-1000}"
READS="${READS:-10}"
out="$root/benches/out"
mkdir -p "$out"
target="${CARGO_TARGET_DIR:-$root/target}"
scripts/install-runtime.sh
mercator_bin="${MERCATOR_BIN:-$target/release/mercator}"
[ -n "${MERCATOR_BIN:-}" ] || cargo build --release --quiet --bin mercator
export API_KEY="mk_benchadmin_0123456789abcdef0123456789abcdef"
data="$out/sourcing-data"
rm -rf "$data"
port=8131
RUST_LOG=warn MERCATOR_ADMIN_KEY="$API_KEY" "$mercator_bin" serve --addr "127.0.0.1:$port" \
  --data-dir "$data" --max-body-bytes 16777216 & pid=$!
trap 'kill $pid 2>/dev/null; wait 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
# The history ends yesterday: quotes are judged today.
FIXTURE_END=yesterday python3 benches/fixture.py "http://127.0.0.1:$port" "$out/sourcing-ids.json" >/dev/null
python3 - "http://127.0.0.1:$port" "$out/sourcing-ids.json" "$LINES" "$READS" <<'PY'
import datetime, json, os, statistics, sys, time, urllib.request

base, ids, lines, reads = sys.argv[1], json.load(open(sys.argv[2])), int(sys.argv[3]), int(sys.argv[4])
key = os.environ["API_KEY"]


def call(method, path, body=None, accept="application/json"):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers={
        "content-type": "application/json", "accept": accept, "authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req) as r:
        raw = r.read()
    return json.loads(raw) if accept == "application/json" else raw


materials = sorted(ids["materials"].values())
suppliers = sorted(ids["suppliers"].values())
today = datetime.date.today()
needed = (today + datetime.timedelta(days=30)).isoformat()
rfq = call("POST", "/api/v1/rfqs", {
    "title": "bench", "currency": "EUR",
    "deadline": (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)).isoformat(),
    "lines": [{"material_id": materials[i % len(materials)], "quantity": 50 + (i * 37) % 950, "needed_by": needed}
              for i in range(lines)],
    "suppliers": suppliers})
call("POST", f"/api/v1/rfqs/{rfq['id']}/open")
rates, benchmarked = [], 0
for k, supplier in enumerate(suppliers):
    body = {"supplier_id": supplier, "valid_until": (today + datetime.timedelta(days=60)).isoformat(),
            "lines": [{"line_id": str(i + 1), "unit_price": round(5 + ((i * 7 + k * 13) % 100) / 10, 2),
                       "lead_time_days": 10 + (k * 3) % 30} for i in range(lines)]}
    started = time.perf_counter()
    quote = call("POST", f"/api/v1/rfqs/{rfq['id']}/quotes", body)
    rates.append(lines / (time.perf_counter() - started))
    benchmarked += sum(1 for l in quote["lines"] if l["benchmark"] is not None)
json_ms, csv_ms = [], []
for _ in range(reads):
    started = time.perf_counter()
    comparison = call("GET", f"/api/v1/rfqs/{rfq['id']}/comparison")
    json_ms.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    call("GET", f"/api/v1/rfqs/{rfq['id']}/comparison?format=csv", accept="text/csv")
    csv_ms.append((time.perf_counter() - started) * 1000)
cells = sum(len(l["offers"]) for l in comparison["lines"])
print(json.dumps({"lines": lines, "suppliers": len(suppliers), "benchmarked_lines": benchmarked,
                  "quote_lines_per_s_median": round(statistics.median(rates)),
                  "quote_lines_per_s_min": round(min(rates)), "quote_lines_per_s_max": round(max(rates)),
                  "comparison_cells": cells, "comparison_json_ms_median": round(statistics.median(json_ms), 1),
                  "comparison_csv_ms_median": round(statistics.median(csv_ms), 1)}))
PY
