"""Train forecast version 2 through the feature pipeline.

    python models/train/forecast.py     # models/forecast/2 + fixtures/golden/forecast-v2.json

1. Writes the feature spec (models/forecast/2/features.toml): lags, rolling statistics, percent changes and
   the z-score of the material's price series as of a day. The server computes the same row when it
   answers POST /api/v1/analytics/forecast.
2. Materialises the fixture with `mercator features materialize` and keeps one row per material and day
   (history features do not depend on the observation).
3. Targets: the mean clean price of each of the HORIZON days from the as-of day on. One ridge regression per
   day ahead on the standardised row predicts ln(target / 7-day mean); the ONNX graph standardises, applies
   the weights and turns the ratios back into prices.
4. Split-conformal intervals per day ahead, normalised by the 28-day volatility, calibrated on targets in
   the CALIBRATION_DAYS before the held-out period; held-out MAPE, RMSE, the naive last-price and 7-day-mean
   baselines and the 80% interval's coverage go into the manifest.

Set MERCATOR to the command that runs the binary (default: `cargo run --release --quiet --bin mercator --`).
"""

import collections
import datetime as dt
import json

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from pipeline import (ROOT, conformal_quantile, fixture_rows, manifest_head, materialize, spec_sha256,
                      split_dates, profile, write_golden, write_spec)

VERSION = 2
HORIZON = 28
RIDGE = 1.0
LEVELS = [0.5, 0.8, 0.9, 0.95]
SCALE_FLOOR = 0.01

SPEC_HEAD = """\
# The input features of forecast version 2, in input order. Computed by the features/ crate for training
# (mercator features materialize) and serving (POST /api/v1/analytics/forecast): one implementation.
name = "forecast_v2"
kernel = 1
units_per_price = 10000
min_history_days = 20
max_staleness_days = 28
max_lead_days = 366
default_lead_days = 0
"""

FEATURES = [{"kind": "lag", "days": d} for d in (1, 2, 3, 7, 14, 28)] + [
    {"kind": "rolling", "stat": "mean", "days": d} for d in (7, 28, 90)
] + [
    {"kind": "rolling", "stat": "std", "days": 7},
    {"kind": "rolling", "stat": "std", "days": 28},
    {"kind": "rolling", "stat": "min", "days": 28},
    {"kind": "rolling", "stat": "max", "days": 28},
    {"kind": "pct_change", "days": 7},
    {"kind": "pct_change", "days": 28},
    {"kind": "zscore", "days": 28},
]


def forecast_onnx(mean, std, W, b, ref_idx, n_features):
    """features [N,F] -> forecast [N,HORIZON] = roll_mean_7 · exp(((x - mean) / std) · W + b)."""
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for a, n in
             ((mean, "mu"), (std, "sigma"), (W, "W"), (b, "b"))]
    inits.append(numpy_helper.from_array(np.array([ref_idx], np.int64), "ref_idx"))
    nodes = [
        helper.make_node("Sub", ["features", "mu"], ["centred"]),
        helper.make_node("Div", ["centred", "sigma"], ["z"]),
        helper.make_node("MatMul", ["z", "W"], ["zw"]),
        helper.make_node("Add", ["zw", "b"], ["log_ratio"]),
        helper.make_node("Exp", ["log_ratio"], ["ratio"]),
        helper.make_node("Gather", ["features", "ref_idx"], ["ref"], axis=1),
        helper.make_node("Mul", ["ref", "ratio"], ["forecast"]),
    ]
    graph = helper.make_graph(
        nodes, "forecast_ridge",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("forecast", TensorProto.FLOAT, [None, HORIZON])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], producer_name="mercator-train")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main():
    out = ROOT / "models" / "forecast" / str(VERSION)
    out.mkdir(parents=True, exist_ok=True)
    rows = fixture_rows()
    calibration_start, holdout_start = split_dates(rows)
    last = max(dt.date.fromisoformat(r["observed_on"]) for r in rows)
    spec = out / "features.toml"
    write_spec(spec, SPEC_HEAD, FEATURES)
    names, X, table = materialize(spec)

    # The target series: each material's mean clean price by day.
    sums = collections.defaultdict(float)
    counts = collections.defaultdict(int)
    for r in rows:
        if r["is_anomaly"] == "0":
            key = (r["material_code"], dt.date.fromisoformat(r["observed_on"]))
            sums[key] += float(r["unit_price"])
            counts[key] += 1

    # One row per material and as-of day.
    materials = table.column("material_code").to_pylist()
    days = table.column("observed_on").to_pylist()
    first = {}
    for i, key in enumerate(zip(materials, days)):
        first.setdefault(key, i)
    idx = np.array(sorted(first.values()))
    X = X[idx]
    keys = [(materials[i], days[i]) for i in idx]
    T = np.array([d for _, d in keys])
    Y = np.full((len(idx), HORIZON), np.nan)
    target_day = np.empty((len(idx), HORIZON), dtype=object)
    for j, (m, d) in enumerate(keys):
        for h in range(HORIZON):
            day = d + dt.timedelta(days=h)
            target_day[j, h] = day
            if counts.get((m, day)):
                Y[j, h] = sums[(m, day)] / counts[(m, day)]
    before = lambda cut: np.vectorize(lambda x: x < cut)(target_day)
    in_train = before(calibration_start) & ~np.isnan(Y)
    in_cal = (~before(calibration_start)) & before(holdout_start) & ~np.isnan(Y) & (T >= calibration_start)[:, None]
    in_test = (T >= holdout_start)[:, None] & ~np.isnan(Y)

    ref_idx = names.index("roll_mean_7")
    ref = X[:, ref_idx]
    train_rows = in_train.any(axis=1)
    mean = X[train_rows].mean(axis=0)
    std = X[train_rows].std(axis=0)
    std[std == 0] = 1.0
    Z = (X - mean) / std
    W = np.zeros((len(names), HORIZON))
    b = np.zeros(HORIZON)
    for h in range(HORIZON):
        m = in_train[:, h]
        A = np.hstack([Z[m], np.ones((m.sum(), 1))])
        t = np.log(Y[m, h] / ref[m])
        reg = RIDGE * np.eye(A.shape[1])
        reg[-1, -1] = 0.0  # the intercept is not shrunk
        coef = np.linalg.solve(A.T @ A + reg, A.T @ t)
        W[:, h], b[h] = coef[:-1], coef[-1]

    onx = forecast_onnx(mean, std, W, b, ref_idx, len(names))
    sess = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    Xf = X.astype(np.float32)
    P = sess.run(None, {"features": Xf})[0].astype(np.float64)

    scale = (X[:, names.index("roll_std_28")] / X[:, names.index("roll_mean_28")] + SCALE_FLOOR)[:, None]
    S = np.abs(np.log(Y / P)) / scale
    step_q = [[conformal_quantile(S[in_cal[:, h], h], lv) for h in range(HORIZON)] for lv in LEVELS]
    pooled_q = [conformal_quantile(S[in_cal], lv) for lv in LEVELS]

    actual, pred = Y[in_test], P[in_test]
    lag1 = np.broadcast_to(X[:, names.index("lag_1")][:, None], Y.shape)[in_test]
    mean7 = np.broadcast_to(ref[:, None], Y.shape)[in_test]
    q80 = np.array(step_q[LEVELS.index(0.8)])
    half = (np.broadcast_to(q80[None, :], Y.shape) * scale)[in_test]
    coverage = float(np.mean((actual >= pred * np.exp(-half)) & (actual <= pred * np.exp(half))))
    mape = lambda p: float(np.mean(np.abs(p - actual) / actual))
    by_step = lambda h: float(np.mean(np.abs(P[in_test[:, h], h] - Y[in_test[:, h], h]) / Y[in_test[:, h], h]))
    metrics = {
        "holdout_mape": round(mape(pred), 4), "holdout_rmse": round(float(np.sqrt(np.mean((pred - actual) ** 2))), 4),
        "naive_last_price_mape": round(mape(lag1), 4),
        "naive_last_price_rmse": round(float(np.sqrt(np.mean((lag1 - actual) ** 2))), 4),
        "naive_mean_7_mape": round(mape(mean7), 4),
        "holdout_mape_day_1": round(by_step(0), 4), "holdout_mape_day_7": round(by_step(6), 4),
        "holdout_mape_day_28": round(by_step(HORIZON - 1), 4),
        "interval_80_holdout_coverage": round(coverage, 4),
        "train_points": int(in_train.sum()), "calibration_points": int(in_cal.sum()),
        "holdout_points": int(in_test.sum()), "holdout_from": holdout_start.isoformat(),
        "data_to": last.isoformat(),
    }

    (out / "model.onnx").write_bytes(onx.SerializeToString())
    lines = manifest_head("forecast", VERSION, "forecast",
                          f"Daily mean price of a material for the {HORIZON} days from the as-of day: ridge regression per day ahead on {len(names)} features from the feature pipeline.",
                          [("features", len(names))], [("forecast", HORIZON)])
    lines += [
        "[features]", 'spec = "features.toml"', f'sha256 = "{spec_sha256(spec)}"', "",
        "[interval]", 'method = "split-conformal per day ahead, normalised by 28-day volatility"',
        f"levels = {json.dumps(LEVELS)}", f"quantiles = {json.dumps([round(q, 6) for q in pooled_q])}",
        f"output_quantiles = {json.dumps([[round(q, 6) for q in row] for row in step_q])}",
        'scale_std = "roll_std_28"', 'scale_mean = "roll_mean_28"', f"scale_floor = {SCALE_FLOOR}",
        f"calibration_rows = {int(in_cal.sum())}", "",
        "[metrics]",
    ] + [f"{k} = {json.dumps(v)}" for k, v in metrics.items()]
    (out / "model.toml").write_text("\n".join(lines) + "\n")

    sample = np.where(T >= holdout_start)[0][:8]
    write_golden("forecast", VERSION, {"features": Xf[sample]},
                 {"forecast": sess.run(None, {"features": Xf[sample]})[0]}, "forecast-v2.json")
    profile("forecast", VERSION, rows, holdout_start)
    print("forecast", VERSION, metrics)


if __name__ == "__main__":
    main()
