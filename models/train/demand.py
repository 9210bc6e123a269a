"""Train the demand model (a material's units per day for each of the next 8 weeks) through the feature pipeline.

    python models/train/generate_supply.py   # fixtures/orders.csv
    python models/train/demand.py            # models/demand/1 + fixtures/golden/demand-v1*.json

1. Writes the spec (models/demand/1/features.toml, `kind = "demand"`).
2. Runs `mercator features demand-frame`: each material's features as of every day, from its orders before
   that day, by the Rust code that answers POST /api/v1/analytics/demand-forecast, and the units per day
   ordered in each of the 8 weeks after it.
3. Fits a ridge regression of the 8 weekly rates ÷ the material's scale (its units per day over the last
   year) on the ratio features, one output per week: rows as of before 2025-05-07 (their weeks end before
   the calibration period). The ONNX graph (built by hand: Slice, MatMul, Add, Mul, Relu) multiplies the
   ratios back by the scale, the row's last column, and clips at 0: output `demand` [N, 8] in units/day.
4. Split-conformal calibration on rows as of 2025-07-01 to 2025-11-06 (weeks inside 2025): equal-tailed
   quantiles of (actual − forecast) ÷ scale of a week's rate, per week ahead; and the residuals' standard
   deviation per week, the forecast error an inventory policy uses.
5. Held-out (as of 2026-01-01 on): WAPE of weekly quantities against two baselines (the last 28 days'
   rate held flat; last year's same weeks), 80% interval coverage. Golden vectors and parity rows.

Set MERCATOR to the command that runs the binary (default: `cargo run --release --quiet --bin mercator --`).
"""

import csv
import json
import os
import pathlib
import subprocess
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from pipeline import ROOT, SEED, conformal_quantile, manifest_head, spec_sha256, write_golden, write_spec

VERSION = 1
WEEKS = 8
TRAIN_TO = "2025-05-07"  # as-of before: the 8 weeks end before the calibration period
CALIBRATE = ("2025-07-01", "2025-11-07")  # as-of in [from, to): the weeks stay in 2025
HOLDOUT_FROM = "2026-01-01"
END = "2027-01-01"  # the day after the fixture's last
LEVELS = [0.5, 0.8, 0.9, 0.95]
ALPHA = 1.0  # ridge penalty on the standardised ratio features

SPEC_HEAD = f"""\
# The input features of demand version 1, in input order. Computed by the features/ crate for training
# (mercator features demand-frame) and serving (POST /api/v1/analytics/demand-forecast): one implementation.
name = "demand_v1"
kind = "demand"
window_days = 364
min_history_days = 91
full_within_days = 28
weeks = {WEEKS}
"""

FEATURES = [
    {"kind": "rate", "days": 7},
    {"kind": "rate", "days": 14},
    {"kind": "rate", "days": 28},
    {"kind": "rate", "days": 91},
    {"kind": "rate", "days": 182},
    {"kind": "last_year", "offset": 0, "days": 14},
    {"kind": "last_year", "offset": 14, "days": 14},
    {"kind": "last_year", "offset": 28, "days": 28},
    {"kind": "last_year", "offset": 56, "days": 28},
    {"kind": "full_year"},
    {"kind": "due"},
    {"kind": "last_cover"},
    {"kind": "scale"},
]


def graph(weights, bias, width):
    """features [N, width] → Relu((features[:, :-1] @ W + b) * features[:, -1:]) as `demand` [N, WEEKS]."""
    k = weights.shape[1]
    const = lambda name, value: numpy_helper.from_array(np.asarray(value), name)
    nodes = [
        helper.make_node("Slice", ["features", "zero", "last", "one"], ["ratios_in"]),
        helper.make_node("Slice", ["features", "last", "width", "one"], ["scale"]),
        helper.make_node("MatMul", ["ratios_in", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["ratios"]),
        helper.make_node("Mul", ["ratios", "scale"], ["units"]),
        helper.make_node("Relu", ["units"], ["demand"]),
    ]
    g = helper.make_graph(
        nodes, "demand",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("demand", TensorProto.FLOAT, [None, k])],
        initializer=[const("zero", np.array([0], np.int64)), const("last", np.array([width - 1], np.int64)),
                     const("width", np.array([width], np.int64)), const("one", np.array([1], np.int64)),
                     const("W", weights.astype(np.float32)), const("b", bias.astype(np.float32))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 15)], producer_name="mercator")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def wape(actual, forecast):
    return float(np.abs(forecast - actual).sum() / actual.sum())


def main():
    out = ROOT / "models" / "demand" / str(VERSION)
    out.mkdir(parents=True, exist_ok=True)
    spec = out / "features.toml"
    write_spec(spec, SPEC_HEAD, FEATURES)

    binary = os.environ.get("MERCATOR", "cargo run --release --quiet --bin mercator --").split()
    with tempfile.TemporaryDirectory() as tmp:
        frame_path = pathlib.Path(tmp) / "frame.csv"
        subprocess.run(binary + ["features", "demand-frame", "--spec", str(spec),
                                 "--orders", str(ROOT / "fixtures" / "orders.csv"),
                                 "--end", END, "--output", str(frame_path)], check=True)
        with frame_path.open() as f:
            rows = list(csv.DictReader(f))
    targets = [f"week_{k}" for k in range(1, WEEKS + 1)]
    names = [n for n in rows[0] if n not in ("material_code", "as_of", *targets)]
    X = np.array([[float(r[n]) for n in names] for r in rows], dtype=np.float32)
    Y = np.array([[float(r[t]) for t in targets] for r in rows])  # units/day per week ahead
    as_of = np.array([r["as_of"] for r in rows])
    scale = X[:, -1].astype(np.float64)
    R = X[:, :-1].astype(np.float64)
    train = as_of < TRAIN_TO
    calibrate = (as_of >= CALIBRATE[0]) & (as_of < CALIBRATE[1])
    test = as_of >= HOLDOUT_FROM

    # Ridge on standardised features, intercept unpenalised; folded back into raw-feature weights.
    mu, sd = R[train].mean(axis=0), R[train].std(axis=0)
    sd[sd == 0] = 1.0
    Z = (R[train] - mu) / sd
    T = Y[train] / scale[train, None]
    t_mean = T.mean(axis=0)
    beta = np.linalg.solve(Z.T @ Z + ALPHA * len(Z) * 1e-3 * np.eye(Z.shape[1]), Z.T @ (T - t_mean))
    weights = beta / sd[:, None]
    bias = t_mean - mu @ weights

    model = graph(weights, bias, len(names))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    predict = lambda idx: sess.run(None, {"features": X[idx]})[0].astype(np.float64)

    # Calibration: residuals ÷ scale of a week's rate, per week ahead.
    cal = np.where(calibrate)[0]
    forecast = predict(cal)
    week_res = (Y[cal] - forecast) / scale[cal, None]
    table = lambda res, q: [[round(conformal_quantile(res[:, k], q(level)), 6) for k in range(WEEKS)] for level in LEVELS]
    week_lower = [[-v for v in row] for row in table(-week_res, lambda l: (1 + l) / 2)]
    week_upper = table(week_res, lambda l: (1 + l) / 2)
    week_error_std = [round(float(week_res[:, k].std(ddof=1)), 6) for k in range(WEEKS)]

    # Held out: weekly quantities (7 × the rate) against the baselines; 80% coverage.
    hold = np.where(test)[0]
    p = predict(hold)
    actual = Y[hold]
    flat = np.repeat(X[hold, names.index("rate_28")].astype(np.float64)[:, None] * scale[hold, None], WEEKS, axis=1)
    last_year = np.stack([X[hold, names.index(n)].astype(np.float64) * scale[hold]
                          for n in ("last_year_0_14", "last_year_0_14", "last_year_14_14", "last_year_14_14",
                                    "last_year_28_28", "last_year_28_28", "last_year_28_28", "last_year_28_28")], axis=1)
    i80 = LEVELS.index(0.8)
    lo = np.maximum(0.0, p + scale[hold, None] * np.array(week_lower[i80]))
    hi = p + scale[hold, None] * np.array(week_upper[i80])
    covered = (actual >= lo) & (actual <= hi)
    metrics = {
        "holdout_wape": round(wape(actual, p), 4),
        "holdout_wape_last_28_days_flat": round(wape(actual, flat), 4),
        "holdout_wape_last_year": round(wape(actual, last_year), 4),
        "holdout_wape_week_1": round(wape(actual[:, 0], p[:, 0]), 4),
        "holdout_wape_week_8": round(wape(actual[:, -1], p[:, -1]), 4),
        "holdout_wape_first_4_weeks_total": round(wape(actual[:, :4].sum(axis=1), p[:, :4].sum(axis=1)), 4),
        "holdout_wape_8_weeks_total": round(wape(actual.sum(axis=1), p.sum(axis=1)), 4),
        "holdout_wape_8_weeks_total_last_28_days_flat": round(wape(actual.sum(axis=1), flat.sum(axis=1)), 4),
        "interval_80_holdout_week_coverage": round(float(covered.mean()), 4),
        "train_rows": int(train.sum()), "calibration_rows": int(calibrate.sum()), "holdout_rows": int(test.sum()),
        "holdout_from": HOLDOUT_FROM,
    }

    (out / "model.onnx").write_bytes(model.SerializeToString())
    lines = manifest_head("demand", VERSION, "demand",
                          f"Units per day of a material for each of the next {WEEKS} weeks: ridge regression of the weekly rates over the material's scale on {len(names) - 1} ratio features of its order history from the feature pipeline.",
                          [("features", len(names))], [("demand", WEEKS)])
    lines += [
        "[features]", 'spec = "features.toml"', f'sha256 = "{spec_sha256(spec)}"', "",
        "[demand]",
        'method = "split-conformal per week ahead, equal-tailed, residuals over the scale (units/day over the last year)"',
        f"levels = {json.dumps(LEVELS)}",
        f"week_lower = {json.dumps(week_lower)}", f"week_upper = {json.dumps(week_upper)}",
        f"week_error_std = {json.dumps(week_error_std)}",
        f"calibration_rows = {int(calibrate.sum())}", "",
        "[metrics]",
    ] + [f"{k} = {json.dumps(v)}" for k, v in metrics.items()]
    (out / "model.toml").write_text("\n".join(lines) + "\n")

    sample = hold[::997][:8]
    write_golden("demand", VERSION, {"features": X[sample]}, {"demand": predict(sample).astype(np.float32)},
                 "demand-v1.json")
    rng = np.random.default_rng(SEED)
    picked = np.sort(np.concatenate([rng.choice(np.where(train)[0], 20, replace=False),
                                     rng.choice(hold, 40, replace=False)]))
    parity = [{"material_code": rows[i]["material_code"], "as_of": rows[i]["as_of"], "features": X[i].tolist(),
               "demand": predict([i])[0].tolist(), "actual": Y[i].tolist()} for i in picked]
    (ROOT / "fixtures" / "golden" / "demand-v1-rows.json").write_text(
        json.dumps({"names": names, "holdout_from": HOLDOUT_FROM, "holdout_wape": metrics["holdout_wape"],
                    "rows": parity}, indent=0) + "\n")
    print("demand", VERSION, metrics)


if __name__ == "__main__":
    main()
