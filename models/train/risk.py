"""Train the supplier-risk model (the chance an order line arrives late) through the feature pipeline.

    python models/train/generate_supply.py   # fixtures/orders.csv, fixtures/deliveries.csv
    python models/train/risk.py              # models/risk/1 + fixtures/golden/risk-v1.json

1. Writes the spec (models/risk/1/features.toml, `kind = "delivery"`) with the category vocabulary.
2. Runs `mercator features delivery-frame`: each line's features as of the day it was ordered, from the
   supplier's book as then known, by the Rust code that answers GET /api/v1/suppliers/{id}/risk, and its
   label (short of its quantity at the end of the promised day).
3. Fits a LightGBM classifier (the category as its code: onnxmltools does not carry categorical splits) on the lines ordered before 2026 (time split), exports ONNX with the
   probability of the late class as the one output `p_late` [N, 1].
4. Sets the bands (medium from the training late rate, high from twice it) and the typical row (the
   training medians) factors are measured against. Records held-out AUC, Brier score, log loss, the base rate, the AUC of the supplier's late rate alone (the
   baseline a scorecard gives) and a ten-bin calibration table in the manifest, and golden vectors.

Set MERCATOR to the command that runs the binary (default: `cargo run --release --quiet --bin mercator --`).
"""

import csv
import json
import os
import pathlib
import subprocess
import tempfile

import lightgbm as lgb
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxmltools import convert_lightgbm
from onnxmltools.convert.common.data_types import FloatTensorType

from pipeline import ROOT, SEED, manifest_head, spec_sha256, write_golden, write_spec

VERSION = 1
HOLDOUT_FROM = "2026-01-01"
END = "2027-01-01"  # the day after the fixture's last

SPEC_HEAD = """\
# The input features of risk version 1, in input order. Computed by the features/ crate for training
# (mercator features delivery-frame) and serving (GET /api/v1/suppliers/{id}/risk): one implementation.
name = "risk_v1"
kind = "delivery"
window_days = 180
prior_late = 1.0
prior_lines = 5.0
"""

FEATURES = [
    {"kind": "log_quantity"},
    {"kind": "lead_days"},
    {"kind": "promised_month"},
    {"kind": "category"},  # vocabulary filled in from the fixture
    {"kind": "supplier_late_rate"},
    {"kind": "supplier_mean_delay"},
    {"kind": "lead_shortfall"},
    {"kind": "supplier_lead_std"},
    {"kind": "supplier_defect_rate"},
    {"kind": "supplier_lines"},
    {"kind": "lead_to_usual"},
    {"kind": "quantity_to_usual"},
]
KEYS = ("reference", "line", "supplier_code", "ordered_on", "late")


def auc(y, p):
    """Mann–Whitney: the chance a late line scores above an on-time one (ties count half)."""
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p))
    sorted_p = p[order]
    i = 0
    while i < len(p):
        j = i
        while j + 1 < len(p) and sorted_p[j + 1] == sorted_p[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos = y == 1
    n1, n0 = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def main():
    out = ROOT / "models" / "risk" / str(VERSION)
    out.mkdir(parents=True, exist_ok=True)
    with (ROOT / "fixtures" / "prices.csv").open() as f:
        categories = sorted({r["category"] for r in csv.DictReader(f)})
    spec = out / "features.toml"
    write_spec(spec, SPEC_HEAD, [dict(f, vocabulary=categories) if f["kind"] == "category" else f for f in FEATURES])

    binary = os.environ.get("MERCATOR", "cargo run --release --quiet --bin mercator --").split()
    with tempfile.TemporaryDirectory() as tmp:
        frame_path = pathlib.Path(tmp) / "frame.csv"
        subprocess.run(binary + ["features", "delivery-frame", "--spec", str(spec),
                                 "--orders", str(ROOT / "fixtures" / "orders.csv"),
                                 "--deliveries", str(ROOT / "fixtures" / "deliveries.csv"),
                                 "--materials", str(ROOT / "fixtures" / "prices.csv"),
                                 "--end", END, "--output", str(frame_path)], check=True)
        with frame_path.open() as f:
            rows = list(csv.DictReader(f))
    names = [n for n in rows[0] if n not in KEYS]
    X = np.array([[float(r[n]) for n in names] for r in rows], dtype=np.float32)
    y = np.array([int(r["late"]) for r in rows])
    ordered = np.array([r["ordered_on"] for r in rows])
    train, test = ordered < HOLDOUT_FROM, ordered >= HOLDOUT_FROM

    model = lgb.LGBMClassifier(n_estimators=400, num_leaves=4, learning_rate=0.02, min_child_samples=80, reg_lambda=5.0,
                               random_state=SEED, verbose=-1, deterministic=True, force_row_wise=True)
    model.fit(X[train], y[train])

    onx = convert_lightgbm(model, initial_types=[("features", FloatTensorType([None, len(names)]))],
                           target_opset=15, zipmap=False)
    g = onx.graph
    probabilities = g.output[1].name
    g.node.append(helper.make_node("Constant", [], ["late_class"], value=numpy_helper.from_array(
        np.array([1], np.int64), "late_class")))
    g.node.append(helper.make_node("Gather", [probabilities, "late_class"], ["p_late"], axis=1))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("p_late", TensorProto.FLOAT, [None, 1]))
    onnx.checker.check_model(onx)
    sess = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    predict = lambda rows: sess.run(None, {"features": X[rows]})[0][:, 0].astype(np.float64)
    lightgbm_p = model.predict_proba(X[test])[:, 1]

    p = predict(test)
    yt = y[test]
    base = float(y[train].mean())
    typical = np.median(X[train].astype(np.float64), axis=0)
    eps = 1e-12
    bins = np.minimum((p * 10).astype(int), 9)
    calibration = [
        [round(float(p[bins == b].mean()), 4), round(float(yt[bins == b].mean()), 4), int((bins == b).sum())]
        for b in range(10) if (bins == b).sum() > 0
    ]
    metrics = {
        "holdout_auc": round(auc(yt, p), 4),
        "holdout_auc_supplier_late_rate_alone": round(auc(yt, X[test, names.index("supplier_late_rate")].astype(np.float64)), 4),
        "holdout_brier": round(float(np.mean((p - yt) ** 2)), 4),
        "holdout_brier_base_rate": round(float(np.mean((y[train].mean() - yt) ** 2)), 4),
        "holdout_log_loss": round(float(-np.mean(yt * np.log(p + eps) + (1 - yt) * np.log(1 - p + eps))), 4),
        "holdout_late_rate": round(float(yt.mean()), 4),
        "holdout_mean_p_late": round(float(p.mean()), 4),
        "max_abs_diff_vs_lightgbm": float(np.max(np.abs(lightgbm_p - p))),
        "train_rows": int(train.sum()), "holdout_rows": int(test.sum()), "holdout_from": HOLDOUT_FROM,
    }

    (out / "model.onnx").write_bytes(onx.SerializeToString())
    lines = manifest_head("risk", VERSION, "risk",
                          f"Chance an order line arrives late: LightGBM, 400 trees of 4 leaves, {len(names)} features of the supplier's order book from the feature pipeline.",
                          [("features", len(names))], [("p_late", 1)])
    lines += [
        "[features]", 'spec = "features.toml"', f'sha256 = "{spec_sha256(spec)}"', "",
        "[risk]",
        'method = "medium from the training late rate, high from twice it; typical = the training rows\' medians"',
        f"medium = {round(base, 4)}", f"high = {round(min(0.9, 2 * base), 4)}",
        f"typical = {json.dumps([round(float(v), 6) for v in typical])}", "",
        "[metrics]",
    ] + [f"{k} = {json.dumps(v)}" for k, v in metrics.items()]
    lines += ["# [mean predicted, observed late share, lines] per tenth of the held-out predictions",
              f"holdout_calibration = {json.dumps(calibration)}"]
    (out / "model.toml").write_text("\n".join(lines) + "\n")

    # Golden vectors: eight held-out rows, and the frame rows the server's parity test asks for.
    sample = np.where(test)[0][:8]
    write_golden("risk", VERSION, {"features": X[sample]}, {"p_late": predict(sample)[:, None].astype(np.float32)},
                 "risk-v1.json")
    rng = np.random.default_rng(SEED)
    picked = np.sort(np.concatenate([rng.choice(np.where(train)[0], 40, replace=False),
                                     rng.choice(np.where(test)[0], 40, replace=False)]))
    parity = [{k: rows[i][k] for k in ("reference", "line", "supplier_code", "ordered_on")}
              | {"features": X[i].tolist(), "p_late": float(predict([i])[0]), "late": int(y[i])} for i in picked]
    (ROOT / "fixtures" / "golden" / "risk-v1-rows.json").write_text(
        json.dumps({"names": names, "holdout_from": HOLDOUT_FROM, "holdout_auc": metrics["holdout_auc"],
                    "rows": parity}, indent=0) + "\n")
    print("risk", VERSION, metrics)
    print("calibration", calibration)


if __name__ == "__main__":
    main()
