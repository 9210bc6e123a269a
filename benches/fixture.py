"""Creates the fixture's materials and suppliers and ingests fixtures/prices.csv through the bulk API of the
server at argv[1] (API_KEY from the environment). Writes {"materials": {code: id}, "suppliers": {...}} to
argv[2], and the single prediction request the load benchmarks send to argv[3] if given."""
import csv, json, os, sys, urllib.request

base, key = sys.argv[1], os.environ["API_KEY"]


def call(path, body, kind="application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"content-type": kind, "authorization": f"Bearer {key}"})
    return json.load(urllib.request.urlopen(req))


rows = list(csv.DictReader(open("fixtures/prices.csv")))
materials, suppliers = {}, {}
for r in rows:
    if r["material_code"] not in materials:
        materials[r["material_code"]] = call("/api/v1/materials", {"code": r["material_code"], "name": r["material_code"],
            "category": r["category"], "unit": r["unit"], "list_price": float(r["list_price"]), "specifications": {}})["id"]
    if r["supplier_code"] not in suppliers:
        suppliers[r["supplier_code"]] = call("/api/v1/suppliers", {"code": r["supplier_code"], "name": r["supplier_code"],
            "country": "DE", "reliability": float(r["supplier_reliability"])})["id"]
# FIXTURE_END=yesterday moves every observation so the history ends yesterday (questions asked today).
import datetime
shift = datetime.timedelta(0)
if os.environ.get("FIXTURE_END") == "yesterday":
    last = max(datetime.date.fromisoformat(r["observed_on"]) for r in rows)
    shift = datetime.date.today() - datetime.timedelta(days=1) - last
for r in rows:
    r["observed_on"] = (datetime.date.fromisoformat(r["observed_on"]) + shift).isoformat()
lines = ["time,material_id,supplier_id,price,currency,quantity,price_type"]
lines += [f'{r["observed_on"]}T00:00:00Z,{materials[r["material_code"]]},{suppliers[r["supplier_code"]]},{r["unit_price"]},EUR,{r["quantity"]},quote' for r in rows]
print(call("/api/v1/prices/bulk", ("\n".join(lines) + "\n").encode(), "text/csv")["inserted"], "prices ingested", file=sys.stderr)
json.dump({"materials": materials, "suppliers": suppliers}, open(sys.argv[2], "w"))
if len(sys.argv) > 3:
    json.dump({"material_id": materials["ALU-001"], "supplier_id": suppliers["SUP-004"], "quantity": 500,
               "as_of": "2025-06-02", "delivery_date": "2025-06-20"}, open(sys.argv[3], "w"))
