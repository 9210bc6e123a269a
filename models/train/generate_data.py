"""Generate a realistic procurement price history with a fixed seed.

Materials belong to categories with their own price level, trend and yearly seasonality; suppliers charge a
premium and differ in reliability; unit prices fall with quantity (price breaks); a small share of the
observations are injected anomalies (fat-finger prices, unit mix-ups, opportunistic quotes), flagged in the
`is_anomaly` column so the anomaly model can be evaluated.

Writes fixtures/prices.csv (two years). Same seed, same file: the shipped models and golden vectors depend
on it. `--days 1095 --out /tmp/prices-3y.csv` writes a longer history from the same generator (the
materialisation benchmark's three years); other lengths draw other random numbers, so a different history.
"""

import argparse
import csv
import datetime as dt
import math
import pathlib

import numpy as np

SEED = 20261123
START = dt.date(2024, 1, 1)
DAYS = 730
ROOT = pathlib.Path(__file__).resolve().parents[2]

CATEGORIES = [
    # name, unit, base price range, yearly trend, seasonal amplitude
    ("steel", "kg", (0.8, 3.5), 0.06, 0.05),
    ("aluminium", "kg", (2.0, 6.0), 0.04, 0.04),
    ("copper", "kg", (7.0, 12.0), 0.09, 0.06),
    ("plastics", "kg", (1.2, 4.0), 0.02, 0.08),
    ("electronics", "pcs", (0.5, 45.0), -0.05, 0.03),
    ("packaging", "pcs", (0.05, 1.5), 0.03, 0.10),
    ("chemicals", "l", (1.5, 20.0), 0.05, 0.07),
    ("fasteners", "pcs", (0.02, 0.8), 0.01, 0.02),
]
MATERIALS_PER_CATEGORY = 5
SUPPLIERS = 10
QUANTITY_BREAKS = [(1, 1.00), (100, 0.97), (500, 0.93), (1000, 0.90), (5000, 0.85)]


def break_factor(quantity: float) -> float:
    factor = 1.0
    for threshold, f in QUANTITY_BREAKS:
        if quantity >= threshold:
            factor = f
    return factor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=DAYS)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "fixtures" / "prices.csv")
    args = parser.parse_args()
    days = args.days
    rng = np.random.default_rng(SEED)
    suppliers = [
        {
            "code": f"SUP-{i + 1:03d}",
            "premium": float(rng.normal(0.0, 0.06)),
            "reliability": float(np.clip(rng.beta(8, 2), 0.3, 0.99)),
        }
        for i in range(SUPPLIERS)
    ]
    rows = []
    for c_idx, (category, unit, (lo, hi), trend, season) in enumerate(CATEGORIES):
        phase = rng.uniform(0, 2 * math.pi)
        # A shared category shock (a random walk) moves all its materials together.
        shock = np.cumsum(rng.normal(0, 0.004, days))
        for m in range(MATERIALS_PER_CATEGORY):
            code = f"{category[:3].upper()}-{m + 1:03d}"
            base = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
            list_price = round(base * 1.15, 4)
            own_trend = trend + rng.normal(0, 0.02)
            noise = np.cumsum(rng.normal(0, 0.002, days))
            carried = rng.choice(SUPPLIERS, size=3, replace=False)
            for day in range(days):
                # About 1.5 observations a day for each material.
                for _ in range(rng.poisson(1.5)):
                    date = START + dt.timedelta(days=day)
                    t = day / 365.0
                    market = base * math.exp(own_trend * t + shock[day] + noise[day])
                    market *= 1 + season * math.sin(2 * math.pi * t + phase)
                    s = int(rng.choice(carried))
                    supplier = suppliers[s]
                    quantity = float(np.round(np.exp(rng.uniform(np.log(5), np.log(8000)))))
                    lead_time = int(rng.integers(1, 60))
                    urgency = 1 + 0.08 * math.exp(-lead_time / 7)
                    price = market * (1 + supplier["premium"]) * break_factor(quantity) * urgency
                    price *= 1 + rng.normal(0, 0.015)
                    anomaly = 0
                    if rng.random() < 0.01:
                        anomaly = 1
                        kind = rng.integers(0, 3)
                        if kind == 0:
                            price *= rng.choice([10.0, 0.1])  # decimal slip
                        elif kind == 1:
                            price *= rng.uniform(1.4, 2.5)  # opportunistic quote
                        else:
                            price *= rng.uniform(0.35, 0.6)  # too good to be true
                    rows.append(
                        [
                            date.isoformat(), code, category, unit, supplier["code"],
                            round(supplier["reliability"], 4), quantity, lead_time,
                            round(price, 6), list_price, anomaly,
                        ]
                    )
    rows.sort(key=lambda r: (r[0], r[1], r[4]))
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "observed_on", "material_code", "category", "unit", "supplier_code",
                "supplier_reliability", "quantity", "lead_time_days", "unit_price", "list_price", "is_anomaly",
            ]
        )
        w.writerows(rows)
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
