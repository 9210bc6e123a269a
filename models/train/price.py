"""Train price version 2 through the feature pipeline.

    python models/train/price.py        # models/price/2 + fixtures/golden/price-v2.json

1. Writes the feature spec (models/price/2/features.toml) with vocabularies fit on the training split only.
2. Runs `mercator features materialize` on fixtures/prices.csv: the training frame is computed by the same
   Rust code that assembles feature rows when the server answers POST /api/v1/predictions/price.
3. Fits LightGBM on the log ratio of the price to its 28-day mean (clean observations, time split), exports
   ONNX with the ratio turned back into a price inside the graph.
4. Calibrates a split-conformal interval on the last 60 days before the held-out period, normalised by the
   28-day volatility, and records quantiles at several levels, plus held-out MAPE, RMSE, the naive last-price
   baseline and the 80% interval's held-out coverage, in the manifest.

Set MERCATOR to the command that runs the binary (default: `cargo run --release --quiet --bin mercator --`).
"""

import json

import lightgbm as lgb
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxmltools import convert_lightgbm
from onnxmltools.convert.common.data_types import FloatTensorType

from pipeline import (ROOT, SEED, conformal_quantile, fixture_rows, manifest_head, materialize, spec_sha256,
                      profile, split_dates, write_golden, write_spec)

VERSION = 2
LEVELS = [0.5, 0.8, 0.9, 0.95]
SCALE_FLOOR = 0.01

SPEC_HEAD = """\
# The input features of price version 2, in input order. Computed by the features/ crate for training
# (mercator features materialize) and serving (POST /api/v1/predictions/price): one implementation.
name = "price_v2"
kernel = 1
units_per_price = 10000
min_history_days = 20
max_staleness_days = 28
max_lead_days = 60
default_lead_days = 30
"""

FEATURES = [
    {"kind": "log_quantity"},
    {"kind": "lead_days"},
    {"kind": "delivery_month"},
    {"kind": "delivery_weekday"},
    {"kind": "category"},  # vocabulary filled in from the training split
    {"kind": "supplier"},
    {"kind": "list_price"},
    {"kind": "supplier_reliability", "default": 0.8},
    {"kind": "lag", "days": 1},
    {"kind": "lag", "days": 7},
    {"kind": "lag", "days": 28},
] + [
    {"kind": "rolling", "stat": stat, "days": days}
    for days in (7, 28, 90)
    for stat in ("mean", "std", "min", "max")
] + [
    {"kind": "pct_change", "days": 7},
    {"kind": "pct_change", "days": 28},
    {"kind": "zscore", "days": 28},
    {"kind": "supplier_premium", "days": 28},
]


def main():
    out = ROOT / "models" / "price" / str(VERSION)
    out.mkdir(parents=True, exist_ok=True)
    rows = fixture_rows()
    calibration_start, holdout_start = split_dates(rows)
    train_rows = [r for r in rows if r["observed_on"] < calibration_start.isoformat()]
    vocabularies = {"category": sorted({r["category"] for r in train_rows}),
                    "supplier": sorted({r["supplier_code"] for r in train_rows})}
    spec = out / "features.toml"
    write_spec(spec, SPEC_HEAD, [dict(f, vocabulary=vocabularies[f["kind"]]) if f["kind"] in vocabularies else f
                                 for f in FEATURES])
    names, X, table = materialize(spec)
    y = table.column("unit_price").to_numpy()
    days = np.array([d for d in table.column("observed_on").to_pylist()])
    clean = table.column("is_anomaly").to_numpy() == 0  # the fair price is learnt from clean observations
    train = clean & (days < calibration_start)
    cal = clean & (days >= calibration_start) & (days < holdout_start)
    test = clean & (days >= holdout_start)

    ref_idx = names.index("roll_mean_28")
    ref = X[:, ref_idx]
    Xf = X.astype(np.float32)
    model = lgb.LGBMRegressor(n_estimators=300, num_leaves=31, learning_rate=0.05, random_state=SEED,
                              verbose=-1, deterministic=True, force_row_wise=True)
    model.fit(Xf[train], np.log(y[train] / ref[train]))

    onx = convert_lightgbm(model, initial_types=[("features", FloatTensorType([None, len(names)]))],
                           target_opset=15, zipmap=False)
    g = onx.graph
    raw = g.output[0].name
    g.node.append(helper.make_node("Constant", [], ["ref_idx"], value=numpy_helper.from_array(
        np.array([ref_idx], np.int64), "ref_idx")))
    g.node.append(helper.make_node("Gather", ["features", "ref_idx"], ["ref"], axis=1))
    g.node.append(helper.make_node("Exp", [raw], ["ratio"]))
    g.node.append(helper.make_node("Mul", ["ref", "ratio"], ["price"]))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("price", TensorProto.FLOAT, [None, 1]))
    onnx.checker.check_model(onx)
    sess = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    predict = lambda rows: sess.run(None, {"features": Xf[rows]})[0][:, 0].astype(np.float64)

    # Split-conformal, normalised by volatility: score = |ln(y / pred)| / (std28 / mean28 + floor).
    scale = lambda rows: X[rows, names.index("roll_std_28")] / X[rows, ref_idx] + SCALE_FLOOR
    cal_scores = np.abs(np.log(y[cal] / predict(cal))) / scale(cal)
    quantiles = [conformal_quantile(cal_scores, lv) for lv in LEVELS]

    pred = predict(test)
    actual = y[test]
    mape = float(np.mean(np.abs(pred - actual) / actual))
    rmse = float(np.sqrt(np.mean((pred - actual) ** 2)))
    lag1 = X[test, names.index("lag_1")]
    naive_mape = float(np.mean(np.abs(lag1 - actual) / actual))
    naive_rmse = float(np.sqrt(np.mean((lag1 - actual) ** 2)))
    q80 = quantiles[LEVELS.index(0.8)]
    half = q80 * scale(test)
    coverage = float(np.mean((actual >= pred * np.exp(-half)) & (actual <= pred * np.exp(half))))
    metrics = {
        "holdout_mape": round(mape, 4), "holdout_rmse": round(rmse, 4),
        "naive_last_price_mape": round(naive_mape, 4), "naive_last_price_rmse": round(naive_rmse, 4),
        "interval_80_holdout_coverage": round(coverage, 4),
        "train_rows": int(train.sum()), "calibration_rows": int(cal.sum()), "holdout_rows": int(test.sum()),
        "holdout_from": holdout_start.isoformat(),
    }

    (out / "model.onnx").write_bytes(onx.SerializeToString())
    lines = manifest_head("price", VERSION, "price",
                          f"Fair unit price of a purchase: LightGBM, 300 trees, {len(names)} features from the feature pipeline.",
                          [("features", len(names))], [("price", 1)],
                          # Two sessions: a batch job takes both cores when nobody else asks, and while
                          # interactive requests come one stays free for them (benches/RESULTS.md).
                          instances=2)
    lines += [
        "[features]", 'spec = "features.toml"', f'sha256 = "{spec_sha256(spec)}"', "",
        "[interval]", 'method = "split-conformal, normalised by 28-day volatility"',
        f"levels = {json.dumps(LEVELS)}", f"quantiles = {json.dumps([round(q, 6) for q in quantiles])}",
        'scale_std = "roll_std_28"', 'scale_mean = "roll_mean_28"', f"scale_floor = {SCALE_FLOOR}",
        f"calibration_rows = {int(cal.sum())}", "",
        "[metrics]",
    ] + [f"{k} = {json.dumps(v)}" for k, v in metrics.items()]
    (out / "model.toml").write_text("\n".join(lines) + "\n")

    sample = np.where(test)[0][:8]
    write_golden("price", VERSION, {"features": Xf[sample]}, {"price": predict(sample)[:, None].astype(np.float32)},
                 "price-v2.json")
    profile("price", VERSION, rows, holdout_start)
    print("price", VERSION, metrics, "quantiles", dict(zip(LEVELS, quantiles)))


if __name__ == "__main__":
    main()
