"""Generate three years of purchase orders and deliveries for the fixture's materials and suppliers.

    python models/train/generate_supply.py    # fixtures/orders.csv, fixtures/deliveries.csv (fixed seed)

Reads fixtures/prices.csv for the materials (code, category), the suppliers (code, reliability), which
suppliers carry which material and the monthly price level. Then, from 2024-01-01 for three years:

- Demand: each material has a daily consumption with its own level, yearly seasonality and a slow trend;
  it is ordered every `cycle` days (7 to 21, per material), the quantity being the demand until the next
  order plus noise. Lines of one supplier placed on one day are one order.
- Promised dates: each supplier quotes its own lead time (7 to 35 days) with some spread.
- Lateness: the chance a line is late rises with the supplier's unreliability and its current spell (a
  monthly random walk), with promises shorter than the supplier's usual lead (rushed orders), with large
  quantities (against the material's usual) and in August and December; the delay when late is lognormal
  with a supplier-specific scale. Some early deliveries.
- Partial deliveries: one line in eight arrives in two receipts, the second 2 to 10 days later.
- Defects: each supplier has a share of lines (1% to 20%) with a quality incident, where 2% to 15% of
  the receipt is rejected; rejected units are replaced by one more receipt 3 to 10 days after the last.
- Lines promised after the end stay open (undelivered), as in a live order book.

The files name materials and suppliers by code (the tests and the benchmark map codes to ids when they
import them). Same seed, same files: the supplier-risk model and its golden vectors depend on them.
"""

import csv
import datetime as dt
import math
import pathlib
from collections import defaultdict

import numpy as np

SEED = 20261207
START = dt.date(2024, 1, 1)
DAYS = 1096
ROOT = pathlib.Path(__file__).resolve().parents[2]

# Daily demand level per category (units/day), before the material's own factor.
DEMAND = {
    "steel": 400.0, "aluminium": 250.0, "copper": 80.0, "plastics": 300.0,
    "electronics": 120.0, "packaging": 900.0, "chemicals": 150.0, "fasteners": 2500.0,
}


def main() -> None:
    rng = np.random.default_rng(SEED)
    with (ROOT / "fixtures" / "prices.csv").open() as f:
        prices = list(csv.DictReader(f))
    materials = sorted({(r["material_code"], r["category"]) for r in prices})
    reliability = {r["supplier_code"]: float(r["supplier_reliability"]) for r in prices}
    carried = defaultdict(set)
    monthly = defaultdict(list)
    for r in prices:
        if r["is_anomaly"] == "1":
            continue
        carried[r["material_code"]].add(r["supplier_code"])
        monthly[(r["material_code"], r["observed_on"][:7])].append(float(r["unit_price"]))
    last_month = {}
    for (code, month), values in sorted(monthly.items()):
        last_month[code] = float(np.median(values))

    suppliers = {}
    for code in sorted(reliability):
        r = reliability[code]
        suppliers[code] = {
            # Logit of the base chance of a late line: about 5% for the most reliable, 45% for the least.
            "late_logit": math.log(0.05 / 0.95) + 3.2 * (1 - r) / 0.7 + rng.normal(0, 0.25),
            "delay_scale": float(rng.uniform(1.0, 2.2)),  # lognormal mu of days late
            "lead": int(rng.integers(7, 36)),
            "lead_spread": float(rng.uniform(0.05, 0.25)),
            "incidents": float(rng.uniform(0.01, 0.2)),
        }

    # A supplier has good and bad spells: its lateness drifts month by month (a random walk on the logit).
    drift = {code: np.cumsum(rng.normal(0, 0.3, DAYS // 30 + 1)) for code in suppliers}
    end = START + dt.timedelta(days=DAYS - 1)
    lines = []  # (ordered_on, supplier, material, quantity, unit_price, promised)
    usual = {}
    for code, category in materials:
        level = DEMAND[category] * float(np.exp(rng.normal(0, 0.5)))
        phase = rng.uniform(0, 2 * math.pi)
        amplitude = rng.uniform(0.05, 0.3)
        trend = rng.normal(0.03, 0.05)
        cycle = int(rng.integers(7, 22))
        usual[code] = level * cycle
        sellers = sorted(carried[code])
        weights = rng.dirichlet(np.ones(len(sellers)) * 2)
        day = int(rng.integers(0, cycle))
        while day < DAYS:
            t = day / 365.0
            demand = level * (1 + amplitude * math.sin(2 * math.pi * t + phase)) * math.exp(trend * t)
            quantity = float(max(1.0, round(demand * cycle * float(np.exp(rng.normal(0, 0.4))))))
            supplier = sellers[int(rng.choice(len(sellers), p=weights))]
            ordered_on = START + dt.timedelta(days=day)
            month = ordered_on.isoformat()[:7]
            base = float(np.median(monthly[(code, month)])) if monthly.get((code, month)) else last_month[code]
            unit_price = round(base * float(np.exp(rng.normal(0, 0.02))) * (0.97 if quantity > usual[code] else 1.0), 4)
            s = suppliers[supplier]
            lead = max(2, int(round(s["lead"] * float(np.exp(rng.normal(0, s["lead_spread"]))))))
            # One order in four is a rush: promised sooner than the supplier's usual.
            if rng.random() < 1 / 4:
                lead = max(1, lead // 3)
            lines.append((ordered_on, supplier, code, quantity, unit_price, ordered_on + dt.timedelta(days=lead)))
            day += cycle + int(rng.integers(-2, 3))

    # Lines of one supplier on one day are one order, in material order.
    orders = defaultdict(list)
    for line in sorted(lines, key=lambda l: (l[0], l[1], l[2])):
        orders[(line[0], line[1])].append(line)
    order_rows, delivery_rows = [], []
    for n, ((ordered_on, supplier), order_lines) in enumerate(sorted(orders.items()), start=1):
        reference = f"PO-{n:05d}"
        s = suppliers[supplier]
        for i, (_, _, code, quantity, unit_price, promised) in enumerate(order_lines, start=1):
            order_rows.append([reference, supplier, "EUR", ordered_on.isoformat(), code, quantity, unit_price,
                               promised.isoformat()])
            lead = (promised - ordered_on).days
            logit = s["late_logit"] + drift[supplier][(ordered_on - START).days // 30]
            logit += 2.5 * max(0.0, 1 - lead / s["lead"])  # rushed: promised sooner than its usual lead
            logit += 1.0 * math.log(max(quantity / usual[code], 0.05))  # large against the usual
            logit += 1.0 if promised.month in (8, 12) else 0.0  # holidays
            late = rng.random() < 1 / (1 + math.exp(-logit))
            if late:
                delay = max(1, int(round(float(np.exp(rng.normal(s["delay_scale"], 0.6))))))
            else:
                delay = -int(rng.integers(0, 3)) if rng.random() < 0.3 else 0
            arrives = max(ordered_on + dt.timedelta(days=1), promised + dt.timedelta(days=delay))
            if arrives > end:
                continue  # still open at the end
            # A quality incident (a share of the receipt refused) on a supplier-specific share of lines.
            rejected = 0.0
            if rng.random() < s["incidents"]:
                rejected = float(max(1, round(quantity * float(rng.uniform(0.02, 0.15)))))
            if rng.random() < 1 / 8 and quantity >= 2:
                first = float(math.floor(quantity * float(rng.uniform(0.3, 0.8))))
                second_on = arrives + dt.timedelta(days=int(rng.integers(2, 11)))
                first_rejected = float(min(first, math.floor(rejected / 2)))
                delivery_rows.append([reference, i, arrives.isoformat(), first, first_rejected])
                if second_on <= end:
                    delivery_rows.append([reference, i, second_on.isoformat(), quantity - first,
                                          rejected - first_rejected])
            else:
                delivery_rows.append([reference, i, arrives.isoformat(), quantity, rejected])
            # Rejected units are replaced: one more receipt a few days after the last.
            if rejected > 0:
                last = max(date for ref, line, date, *_ in delivery_rows[-2:] if ref == reference and line == i)
                replaced_on = dt.date.fromisoformat(last) + dt.timedelta(days=int(rng.integers(3, 11)))
                if replaced_on <= end:
                    delivery_rows.append([reference, i, replaced_on.isoformat(), rejected, 0.0])
    delivery_rows.sort(key=lambda r: (r[2], r[0], r[1]))

    out = ROOT / "fixtures"
    with (out / "orders.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["reference", "supplier_code", "currency", "ordered_on", "material_code", "quantity",
                    "unit_price", "promised_date"])
        w.writerows(order_rows)
    with (out / "deliveries.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["order_reference", "line", "delivered_on", "quantity", "rejected_quantity"])
        w.writerows(delivery_rows)
    print(f"wrote {len(orders)} orders ({len(order_rows)} lines) and {len(delivery_rows)} deliveries")


if __name__ == "__main__":
    main()
