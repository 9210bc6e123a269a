#!/usr/bin/env bash
# What supply costs on a release server with the shipped models: the fixture's catalogue and its three years
# of orders and deliveries imported (both timed), then
#   - risk for every supplier of the organization (GET /api/v1/suppliers/{id}/risk for each of the 10, a
#     planned line of a material each carries, as of the fixture's last day), $ROUNDS rounds;
#   - the demand forecast (8 weeks, by week) of each of the fixture's materials, and a policy for each whose
#     demand is that forecast (lead time given), as of the day after the last order, $ROUNDS rounds;
#   - inventory policies for 1,000 materials (POST /api/v1/inventory/policy, demand, costs and service
#     level varying, continuous and periodic review in turn), one after another on one connection.
# Prints p50 and p99 per request and the time for all suppliers / all 1,000 policies (benches/RESULTS.md).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
ROUNDS="${ROUNDS:-20}"
out="$root/benches/out"
mkdir -p "$out"
target="${CARGO_TARGET_DIR:-$root/target}"
scripts/install-runtime.sh
mercator_bin="${MERCATOR_BIN:-$target/release/mercator}"
[ -n "${MERCATOR_BIN:-}" ] || cargo build --release --quiet --bin mercator
export API_KEY="mk_benchadmin_0123456789abcdef0123456789abcdef"
data="$out/supply-data"
rm -rf "$data"
port=8151
RUST_LOG=warn MERCATOR_ADMIN_KEY="$API_KEY" "$mercator_bin" serve --addr "127.0.0.1:$port" \
  --data-dir "$data" & pid=$!
trap 'kill $pid 2>/dev/null; wait 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
python3 - "127.0.0.1" "$port" "$ROUNDS" <<'PY'
import csv, http.client, json, os, statistics, sys, time

host, port, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
conn = http.client.HTTPConnection(host, port, timeout=300)
auth = {"authorization": f"Bearer {os.environ['API_KEY']}"}


def call(method, path, body=None, kind="application/json"):
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    started = time.perf_counter()
    conn.request(method, path, data, {**auth, "content-type": kind})
    r = conn.getresponse()
    payload = r.read()
    elapsed = time.perf_counter() - started
    if r.status >= 300:
        sys.exit(f"{method} {path}: {r.status} {payload[:300]!r}")
    return json.loads(payload), elapsed


def quantiles(seconds):
    ms = sorted(s * 1000 for s in seconds)
    return ms[len(ms) // 2], ms[min(len(ms) - 1, int(len(ms) * 0.99))]


prices = list(csv.DictReader(open("fixtures/prices.csv")))
materials, suppliers = {}, {}
for r in prices:
    if r["material_code"] not in materials:
        materials[r["material_code"]] = call("POST", "/api/v1/materials", {"code": r["material_code"], "name": r["material_code"],
            "category": r["category"], "unit": r["unit"], "list_price": float(r["list_price"]), "specifications": {}})[0]["id"]
    if r["supplier_code"] not in suppliers:
        suppliers[r["supplier_code"]] = call("POST", "/api/v1/suppliers", {"code": r["supplier_code"], "name": r["supplier_code"],
            "country": "DE", "reliability": float(r["supplier_reliability"])})[0]["id"]
orders = list(csv.DictReader(open("fixtures/orders.csv")))
body = ["reference,supplier_id,currency,ordered_on,material_id,quantity,unit_price,promised_date"]
body += [f'{o["reference"]},{suppliers[o["supplier_code"]]},{o["currency"]},{o["ordered_on"]},{materials[o["material_code"]]},'
         f'{o["quantity"]},{o["unit_price"]},{o["promised_date"]}' for o in orders]
answer, orders_s = call("POST", "/api/v1/orders/bulk", ("\n".join(body) + "\n").encode(), "text/csv")
deliveries = open("fixtures/deliveries.csv", "rb").read()
answer2, deliveries_s = call("POST", "/api/v1/deliveries/bulk", deliveries, "text/csv")
print(f"import: {answer['lines']} order lines ({answer['orders']} orders) in {orders_s:.2f} s; "
      f"{answer2['deliveries']} deliveries in {deliveries_s:.2f} s")

# Risk: each supplier with a material it carries, as of the fixture's last day.
carried = {}
for o in orders:
    carried.setdefault(o["supplier_code"], o["material_code"])
as_of = max(o["ordered_on"] for o in orders)
one, every = [], []
for _ in range(rounds):
    started = time.perf_counter()
    for code, supplier in sorted(suppliers.items()):
        _, s = call("GET", f"/api/v1/suppliers/{supplier}/risk?material_id={materials[carried[code]]}"
                           f"&quantity=1000&as_of={as_of}")
        one.append(s)
    every.append(time.perf_counter() - started)
p50, p99 = quantiles(one)
e50, e99 = quantiles(every)
print(f"risk: {len(one)} requests, p50 {p50:.2f} ms, p99 {p99:.2f} ms per supplier; "
      f"all {len(suppliers)} suppliers p50 {e50:.1f} ms, p99 {e99:.1f} ms")

# Demand: each material's forecast, and a policy taking its demand from it.
import datetime
after = (datetime.date.fromisoformat(as_of) + datetime.timedelta(days=1)).isoformat()
forecasts, from_forecast = [], []
for _ in range(rounds):
    for material in materials.values():
        _, s = call("POST", "/api/v1/analytics/demand-forecast", {"material_id": material, "horizon_days": 56, "as_of": after})
        forecasts.append(s)
        _, s = call("POST", "/api/v1/inventory/policy", {"material_id": material, "unit_cost": 5, "holding_rate": 0.2,
            "ordering_cost": 50, "service_level": {"type": "cycle", "value": 0.95}, "as_of": after,
            "lead_time": {"mean_days": 14, "std_days": 3}})
        from_forecast.append(s)
p50, p99 = quantiles(forecasts)
print(f"demand forecast: {len(forecasts)} requests ({len(materials)} materials), p50 {p50:.2f} ms, p99 {p99:.2f} ms")
p50, p99 = quantiles(from_forecast)
print(f"policy with the forecast's demand: {len(from_forecast)} requests, p50 {p50:.2f} ms, p99 {p99:.2f} ms")
# Policies for 1,000 materials.
extra = [call("POST", "/api/v1/materials", {"code": f"BENCH-{i:04d}", "name": f"bench {i}", "category": "steel",
                                            "unit": "kg", "specifications": {}})[0]["id"] for i in range(1000 - len(materials))]
ids = list(materials.values()) + extra
times = []
started = time.perf_counter()
for i, material in enumerate(ids):
    request = {"material_id": material, "unit_cost": 1 + i % 50, "holding_rate": 0.2, "ordering_cost": 50 + i % 7,
               "service_level": {"type": "cycle" if i % 3 else "fill_rate", "value": 0.95 if i % 3 else 0.98},
               "lead_time": {"mean_days": 5 + i % 20, "std_days": 1 + i % 4},
               "demand": {"mean_per_day": 10 + i % 100, "std_per_day": 2 + i % 9}}
    if i % 2:
        request["review"] = {"type": "periodic", "period_days": 7}
    _, s = call("POST", "/api/v1/inventory/policy", request)
    times.append(s)
total = time.perf_counter() - started
p50, p99 = quantiles(times)
print(f"policy: {len(times)} materials in {total * 1000:.0f} ms; p50 {p50:.3f} ms, p99 {p99:.3f} ms per request")
PY
