"""Train anomaly version 2 through the feature pipeline.

    python models/train/anomaly.py      # models/anomaly/2 + fixtures/golden/anomaly-v2.json

1. Writes the feature spec (models/anomaly/2/features.toml): the observed price against the material's
   recent history (28- and 7-day means, last day, 28-day min and max, z-score, list price) and the
   supplier's premium. The server scores every ingested price with these rows, computed by the same code.
2. Materialises the fixture with `mercator features materialize`.
3. Fits an isolation forest on the training split (unsupervised: the injected anomalies stay in, unlabelled)
   and writes it as one TreeEnsembleRegressor (see train.py: ~µs a row instead of ~ms).
4. Sets three thresholds on the calibration period's clean prices: low flags FLAG_RATE of them, medium
   and high fewer; records precision, recall and the false-positive rate on the held-out period.

Set MERCATOR to the command that runs the binary (default: `cargo run --release --quiet --bin mercator --`).
"""

import json

import numpy as np
import onnxruntime as ort
from sklearn.ensemble import IsolationForest

from pipeline import (ROOT, SEED, fixture_rows, manifest_head, materialize, spec_sha256, split_dates,
                      profile, write_golden, write_spec)
from train import isolation_forest_onnx

VERSION = 2
# Share of clean calibration prices above each threshold: the false-positive rate each severity accepts.
FLAG_RATES = {"low": 0.02, "medium": 0.005, "high": 0.001}

SPEC_HEAD = """\
# The input features of anomaly version 2, in input order. Computed by the features/ crate for training
# (mercator features materialize) and serving (scoring on ingest, POST /api/v1/analytics/anomalies).
name = "anomaly_v2"
kernel = 1
units_per_price = 10000
min_history_days = 20
max_staleness_days = 28
max_lead_days = 366
default_lead_days = 0
"""

FEATURES = [
    {"kind": "price_to_rolling", "stat": "mean", "days": 28},
    {"kind": "price_to_rolling", "stat": "mean", "days": 7},
    {"kind": "price_to_lag", "days": 1},
    {"kind": "price_to_rolling", "stat": "min", "days": 28},
    {"kind": "price_to_rolling", "stat": "max", "days": 28},
    {"kind": "price_zscore", "days": 28},
    {"kind": "price_to_list"},
    {"kind": "supplier_premium", "days": 28},
]


def main():
    out = ROOT / "models" / "anomaly" / str(VERSION)
    out.mkdir(parents=True, exist_ok=True)
    rows = fixture_rows()
    calibration_start, holdout_start = split_dates(rows)
    spec = out / "features.toml"
    write_spec(spec, SPEC_HEAD, FEATURES)
    names, X, table = materialize(spec)
    days = np.array(table.column("observed_on").to_pylist())
    labels = table.column("is_anomaly").to_numpy()
    train = days < calibration_start
    cal = (days >= calibration_start) & (days < holdout_start)
    test = days >= holdout_start
    Xf = X.astype(np.float32)

    forest = IsolationForest(n_estimators=200, max_samples=256, random_state=SEED)
    forest.fit(Xf[train])
    onx = isolation_forest_onnx(forest, len(names))
    sess = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    score = sess.run(None, {"features": Xf})[0][:, 0].astype(np.float64)
    max_diff = float(np.max(np.abs(score[test] - (-forest.score_samples(Xf[test])))))

    clean_cal = score[cal & (labels == 0)]
    thresholds = {k: float(np.quantile(clean_cal, 1.0 - rate)) for k, rate in FLAG_RATES.items()}
    metrics = {}
    for k, t in thresholds.items():
        flagged = score >= t
        tp = int((flagged & test & (labels == 1)).sum())
        fp = int((flagged & test & (labels == 0)).sum())
        positives = int((test & (labels == 1)).sum())
        negatives = int((test & (labels == 0)).sum())
        metrics[f"holdout_recall_{k}"] = round(tp / max(1, positives), 4)
        metrics[f"holdout_precision_{k}"] = round(tp / max(1, tp + fp), 4)
        metrics[f"holdout_false_positive_rate_{k}"] = round(fp / max(1, negatives), 4)
    metrics.update({
        "max_abs_diff_vs_sklearn": max_diff,
        "holdout_anomalies": int((test & (labels == 1)).sum()),
        "train_rows": int(train.sum()), "calibration_rows": int(cal.sum()), "holdout_rows": int(test.sum()),
        "holdout_from": holdout_start.isoformat(),
    })

    (out / "model.onnx").write_bytes(onx.SerializeToString())
    lines = manifest_head("anomaly", VERSION, "anomaly",
                          f"Anomaly score of a price observation (0..1, higher is stranger): isolation forest, 200 trees, {len(names)} features from the feature pipeline.",
                          [("features", len(names))], [("anomaly_score", 1)])
    lines += [
        "[features]", 'spec = "features.toml"', f'sha256 = "{spec_sha256(spec)}"', "",
        "[anomaly]", f'method = "thresholds flag {FLAG_RATES["low"]:.1%}, {FLAG_RATES["medium"]:.1%} and {FLAG_RATES["high"]:.1%} of the clean calibration prices"',
    ] + [f"{k} = {round(v, 6)}" for k, v in thresholds.items()] + [
        f"calibration_rows = {int((cal & (labels == 0)).sum())}",
        f"calibrated_rates = {json.dumps([FLAG_RATES[k] for k in ('low', 'medium', 'high')])}", "",
        "[metrics]",
    ] + [f"{k} = {json.dumps(v)}" for k, v in metrics.items()]
    (out / "model.toml").write_text("\n".join(lines) + "\n")

    sample = np.concatenate([np.where(test)[0][:6], np.where(test & (labels == 1))[0][:2]])
    write_golden("anomaly", VERSION, {"features": Xf[sample]},
                 {"anomaly_score": sess.run(None, {"features": Xf[sample]})[0]}, "anomaly-v2.json")
    profile("anomaly", VERSION, rows, holdout_start)
    print("anomaly", VERSION, metrics, "thresholds", thresholds)


if __name__ == "__main__":
    main()
