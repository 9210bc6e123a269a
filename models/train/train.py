"""Train the three shipped models on fixtures/prices.csv and export them as ONNX.

    python models/train/generate_data.py   # fixtures/prices.csv (fixed seed)
    python models/train/train.py           # models/{price,anomaly,forecast}/1 + fixtures/golden/*.json

Each model gets its manifest (model.toml) and golden input/output vectors computed with onnxruntime in
Python, which the Rust tests compare against. Models are committed; CI does not retrain.

Features here are computed with numpy; the feature pipeline issue moves them into the shared Polars code.
"""

import csv
import datetime as dt
import json
import math
import pathlib

import lightgbm as lgb
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxmltools import convert_lightgbm
from onnxmltools.convert.common.data_types import FloatTensorType
from sklearn.ensemble import IsolationForest
from sklearn.neural_network import MLPRegressor

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEED = 7
START = dt.date(2024, 1, 1)
HISTORY = 28
HORIZON = 7

PRICE_FEATURES = [
    "log_quantity", "lead_time_days", "day_of_week", "month_sin", "month_cos", "year_frac",
    "category_idx", "supplier_idx", "supplier_reliability", "list_price",
    "lag_1", "lag_7", "lag_28", "roll_mean_7", "roll_mean_28", "roll_mean_90",
    "roll_std_28", "roll_min_28", "roll_max_28", "pct_change_7",
]
ANOMALY_FEATURES = [
    "log_price_to_mean_28", "zscore_28", "log_quantity", "supplier_reliability",
    "log_price_to_lag_1", "log_price_to_list",
]
CALENDAR = ["dow_sin", "dow_cos", "month_sin", "month_cos"]


def load():
    with (ROOT / "fixtures" / "prices.csv").open() as f:
        rows = list(csv.DictReader(f))
    materials = sorted({r["material_code"] for r in rows})
    categories = sorted({r["category"] for r in rows})
    suppliers = sorted({r["supplier_code"] for r in rows})
    days = max((dt.date.fromisoformat(r["observed_on"]) - START).days for r in rows) + 1
    # The daily reference series of each material: the mean clean-ish price observed that day, carried
    # forward over days without observations. Anomalies are part of the data, as they would be in real life.
    sums = np.zeros((len(materials), days))
    counts = np.zeros((len(materials), days))
    m_index = {m: i for i, m in enumerate(materials)}
    for r in rows:
        d = (dt.date.fromisoformat(r["observed_on"]) - START).days
        i = m_index[r["material_code"]]
        # Normalise to a quantity of one price break so the series tracks the market, not the order mix.
        sums[i, d] += float(r["unit_price"])
        counts[i, d] += 1
    series = np.full((len(materials), days), np.nan)
    mask = counts > 0
    series[mask] = sums[mask] / counts[mask]
    for i in range(len(materials)):
        last = np.nan
        for d in range(days):
            if np.isnan(series[i, d]):
                series[i, d] = last
            else:
                last = series[i, d]
    return rows, materials, categories, suppliers, series, m_index


def window(series_row, d, n):
    """Values of the days [d-n, d), strictly before d (no leakage of the day being priced)."""
    w = series_row[max(0, d - n):d]
    return w[~np.isnan(w)]


def month_angle(date):
    return 2 * math.pi * (date.month - 1) / 12.0


def price_row(r, d, s_row, categories, suppliers):
    date = START + dt.timedelta(days=d)
    w7, w28, w90 = window(s_row, d, 7), window(s_row, d, 28), window(s_row, d, 90)
    if len(w28) < 20 or len(w90) < 60:
        return None
    lag = lambda k: s_row[d - k] if d - k >= 0 and not np.isnan(s_row[d - k]) else w28.mean()
    return [
        math.log(float(r["quantity"])), float(r["lead_time_days"]), float(date.weekday()),
        math.sin(month_angle(date)), math.cos(month_angle(date)), (date.timetuple().tm_yday - 1) / 365.0,
        float(categories.index(r["category"])), float(suppliers.index(r["supplier_code"])),
        float(r["supplier_reliability"]), float(r["list_price"]),
        lag(1), lag(7), lag(28), w7.mean(), w28.mean(), w90.mean(),
        w28.std(), w28.min(), w28.max(), lag(1) / lag(7) - 1.0,
    ]


def anomaly_row(r, d, s_row):
    w28 = window(s_row, d, 28)
    if len(w28) < 20:
        return None
    price = float(r["unit_price"])
    mean, std = w28.mean(), max(w28.std(), 1e-9)
    lag1 = s_row[d - 1] if not np.isnan(s_row[d - 1]) else mean
    return [
        math.log(price / mean), (price - mean) / std, math.log(float(r["quantity"])),
        float(r["supplier_reliability"]), math.log(price / lag1), math.log(price / float(r["list_price"])),
    ]


def calendar_row(date):
    return [
        math.sin(2 * math.pi * date.weekday() / 7), math.cos(2 * math.pi * date.weekday() / 7),
        math.sin(month_angle(date)), math.cos(month_angle(date)),
    ]


# ---------------------------------------------------------------------------------------------- price


def train_price(rows, categories, suppliers, series, m_index, split_day):
    X, y, days = [], [], []
    for r in rows:
        if r["is_anomaly"] == "1":
            continue  # the fair-price model learns from clean observations
        d = (dt.date.fromisoformat(r["observed_on"]) - START).days
        f = price_row(r, d, series[m_index[r["material_code"]]], categories, suppliers)
        if f is not None:
            X.append(f), y.append(float(r["unit_price"])), days.append(d)
    X, y, days = np.asarray(X, np.float32), np.asarray(y, np.float32), np.asarray(days)
    train, test = days < split_day, days >= split_day
    # The target is the log of the ratio to the 28-day mean: scale-free across materials.
    ref = X[:, PRICE_FEATURES.index("roll_mean_28")]
    model = lgb.LGBMRegressor(n_estimators=300, num_leaves=31, learning_rate=0.05, random_state=SEED,
                              verbose=-1, deterministic=True, force_row_wise=True)
    model.fit(X[train], np.log(y[train] / ref[train]))
    pred = ref[test] * np.exp(model.predict(X[test]))
    mape = float(np.mean(np.abs(pred - y[test]) / y[test]))
    naive_mape = float(np.mean(np.abs(ref[test] - y[test]) / y[test]))

    onx = convert_lightgbm(model, initial_types=[("features", FloatTensorType([None, len(PRICE_FEATURES)]))],
                           target_opset=15, zipmap=False)
    # Turn log-ratio into a price inside the graph: price = roll_mean_28 * exp(log_ratio).
    g = onx.graph
    raw = g.output[0].name
    g.node.append(helper.make_node("Constant", [], ["ref_idx"], value=numpy_helper.from_array(
        np.array([PRICE_FEATURES.index("roll_mean_28")], np.int64), "ref_idx")))
    g.node.append(helper.make_node("Gather", ["features", "ref_idx"], ["ref"], axis=1))
    g.node.append(helper.make_node("Exp", [raw], ["ratio"]))
    g.node.append(helper.make_node("Mul", ["ref", "ratio"], ["price"]))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("price", TensorProto.FLOAT, [None, 1]))
    onnx.checker.check_model(onx)
    metrics = {"holdout_mape": round(mape, 4), "naive_roll_mean_28_mape": round(naive_mape, 4),
               "train_rows": int(train.sum()), "holdout_rows": int(test.sum())}
    return onx, X[test], metrics


# -------------------------------------------------------------------------------------------- anomaly


def c_factor(n):
    """Average path length of an unsuccessful BST search over n points (Liu et al.), as scikit-learn."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


def isolation_forest_onnx(forest, n_features):
    """One TreeEnsembleRegressor whose leaves hold depth + c(leaf size), averaged over the trees, then
    score = 2 ** (-mean_path / c(max_samples)): scikit-learn's -score_samples, at ~µs per row instead of the
    ~4,000-node graph skl2onnx writes."""
    attrs = {k: [] for k in ["nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_values",
                             "nodes_modes", "nodes_truenodeids", "nodes_falsenodeids", "nodes_missing_value_tracks_true",
                             "nodes_hitrates", "target_treeids", "target_nodeids", "target_ids", "target_weights"]}
    for t, (est, feats) in enumerate(zip(forest.estimators_, forest.estimators_features_)):
        tree = est.tree_
        depth = np.zeros(tree.node_count)
        for node in range(tree.node_count):
            for child in (tree.children_left[node], tree.children_right[node]):
                if child != -1:
                    depth[child] = depth[node] + 1
        for node in range(tree.node_count):
            leaf = tree.children_left[node] == -1
            attrs["nodes_treeids"].append(t)
            attrs["nodes_nodeids"].append(node)
            attrs["nodes_featureids"].append(int(feats[tree.feature[node]]) if not leaf else 0)
            attrs["nodes_values"].append(float(tree.threshold[node]) if not leaf else 0.0)
            attrs["nodes_modes"].append("LEAF" if leaf else "BRANCH_LEQ")
            attrs["nodes_truenodeids"].append(int(tree.children_left[node]) if not leaf else 0)
            attrs["nodes_falsenodeids"].append(int(tree.children_right[node]) if not leaf else 0)
            attrs["nodes_missing_value_tracks_true"].append(0)
            attrs["nodes_hitrates"].append(1.0)
            if leaf:
                attrs["target_treeids"].append(t)
                attrs["target_nodeids"].append(node)
                attrs["target_ids"].append(0)
                attrs["target_weights"].append(float(depth[node] + c_factor([tree.n_node_samples[node]])[0]))
    ensemble = helper.make_node("TreeEnsembleRegressor", ["features"], ["mean_path"], domain="ai.onnx.ml",
                                n_targets=1, aggregate_function="AVERAGE", post_transform="NONE", **attrs)
    scale = -1.0 / float(c_factor([forest.max_samples_])[0])
    nodes = [
        ensemble,
        helper.make_node("Constant", [], ["neg_inv_c"], value=numpy_helper.from_array(np.array(scale, np.float32), "c")),
        helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.array(2.0, np.float32), "two")),
        helper.make_node("Mul", ["mean_path", "neg_inv_c"], ["exponent"]),
        helper.make_node("Pow", ["two", "exponent"], ["anomaly_score"]),
    ]
    graph = helper.make_graph(
        nodes, "isolation_forest",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("anomaly_score", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15), helper.make_opsetid("ai.onnx.ml", 3)],
                              producer_name="mercator-train")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def train_anomaly(rows, series, m_index, split_day):
    X, labels, days = [], [], []
    for r in rows:
        d = (dt.date.fromisoformat(r["observed_on"]) - START).days
        f = anomaly_row(r, d, series[m_index[r["material_code"]]])
        if f is not None:
            X.append(f), labels.append(int(r["is_anomaly"])), days.append(d)
    X, labels, days = np.asarray(X, np.float32), np.asarray(labels), np.asarray(days)
    train, test = days < split_day, days >= split_day
    forest = IsolationForest(n_estimators=200, max_samples=256, contamination=0.01, random_state=SEED)
    forest.fit(X[train])
    onx = isolation_forest_onnx(forest, X.shape[1])
    sess = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    onnx_scores = sess.run(None, {"features": X[test]})[0][:, 0]
    sk_scores = -forest.score_samples(X[test])
    max_diff = float(np.max(np.abs(onnx_scores - sk_scores)))
    # Recall of the injected anomalies among the top 1% scores of the held-out period.
    cut = np.quantile(onnx_scores, 0.99)
    flagged = onnx_scores >= cut
    recall = float((flagged & (labels[test] == 1)).sum() / max(1, (labels[test] == 1).sum()))
    precision = float((flagged & (labels[test] == 1)).sum() / max(1, flagged.sum()))
    metrics = {"max_abs_diff_vs_sklearn": max_diff, "threshold_top_1pct": round(float(cut), 6),
               "holdout_recall_at_top_1pct": round(recall, 4), "holdout_precision_at_top_1pct": round(precision, 4),
               "train_rows": int(train.sum()), "holdout_rows": int(test.sum())}
    # Golden rows: the first held-out rows plus some labelled anomalies.
    idx = np.concatenate([np.where(test)[0][:6], np.where(test & (labels == 1))[0][:2]])
    return onx, X[idx], metrics


# ------------------------------------------------------------------------------------------- forecast


def forecast_onnx(mlp):
    """history [N,28], calendar [N,4] -> forecast [N,7]. The graph scales each history by its own mean,
    runs the MLP on the scaled history and the calendar, and scales the predicted ratios back."""
    nodes = [
        helper.make_node("ReduceMean", ["history"], ["level"], axes=[1], keepdims=1),
        helper.make_node("Div", ["history", "level"], ["scaled"]),
        helper.make_node("Concat", ["scaled", "calendar"], ["h0"], axis=1),
    ]
    inits = []
    x = "h0"
    for i, (w, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_)):
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(b.astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        x = f"a{i}"
        if i < len(mlp.coefs_) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    nodes.append(helper.make_node("Mul", [x, "level"], ["forecast"]))
    graph = helper.make_graph(
        nodes, "forecast_mlp",
        [helper.make_tensor_value_info("history", TensorProto.FLOAT, [None, HISTORY]),
         helper.make_tensor_value_info("calendar", TensorProto.FLOAT, [None, len(CALENDAR)])],
        [helper.make_tensor_value_info("forecast", TensorProto.FLOAT, [None, HORIZON])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], producer_name="mercator-train")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def train_forecast(series, split_day):
    H, C, Y, days = [], [], [], []
    for s_row in series:
        for d in range(HISTORY + 30, series.shape[1] - HORIZON, 2):
            hist = s_row[d - HISTORY:d]
            fut = s_row[d:d + HORIZON]
            if np.isnan(hist).any() or np.isnan(fut).any():
                continue
            H.append(hist), C.append(calendar_row(START + dt.timedelta(days=d))), Y.append(fut), days.append(d)
    H, C, Y, days = (np.asarray(H, np.float32), np.asarray(C, np.float32), np.asarray(Y, np.float32), np.asarray(days))
    level = H.mean(axis=1, keepdims=True)
    Xs = np.hstack([H / level, C])
    train, test = days < split_day - HORIZON, days >= split_day
    mlp = MLPRegressor(hidden_layer_sizes=(64, 32), max_iter=400, random_state=SEED, early_stopping=True)
    mlp.fit(Xs[train], Y[train] / level[train])
    onx = forecast_onnx(mlp)
    sess = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    pred = sess.run(None, {"history": H[test], "calendar": C[test]})[0]
    mape = float(np.mean(np.abs(pred - Y[test]) / Y[test]))
    naive = float(np.mean(np.abs(H[test][:, -1:] - Y[test]) / Y[test]))
    metrics = {"holdout_mape": round(mape, 4), "naive_last_value_mape": round(naive, 4),
               "train_rows": int(train.sum()), "holdout_rows": int(test.sum())}
    return onx, (H[test][:8], C[test][:8]), metrics


# --------------------------------------------------------------------------------------------- output


def write_model(name, kind, description, onx, inputs, metrics, max_batch_size):
    d = ROOT / "models" / name / "1"
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.onnx").write_bytes(onx.SerializeToString())
    sess = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
    results = sess.run(None, {k: v for k, v in inputs.items()})
    out_names = [o.name for o in sess.get_outputs()]
    lines = [
        f'name = "{name}"', "version = 1", f'kind = "{kind}"', f'description = "{description}"', "",
        "[batching]", f"max_batch_size = {max_batch_size}", "max_queue_delay_us = 0", "queue_capacity = 8192", "",
        "[instances]", "count = 1", "intra_op_threads = 1", "",
    ]
    for k, v in inputs.items():
        lines += ["[[inputs]]", f'name = "{k}"', 'datatype = "FP32"', f"shape = [-1, {v.shape[1]}]", ""]
    for k, v in zip(out_names, results):
        lines += ["[[outputs]]", f'name = "{k}"', 'datatype = "FP32"', f"shape = [-1, {v.shape[1]}]", ""]
    lines += ["[metrics]"] + [f"{k} = {json.dumps(v)}" for k, v in metrics.items()]
    (d / "model.toml").write_text("\n".join(lines) + "\n")
    golden = {
        "model": name,
        "version": "1",
        "tolerance": {"relative": 1e-5},
        "inputs": [{"name": k, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()} for k, v in inputs.items()],
        "outputs": [{"name": k, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()} for k, v in zip(out_names, results)],
    }
    g = ROOT / "fixtures" / "golden"
    g.mkdir(parents=True, exist_ok=True)
    (g / f"{name}.json").write_text(json.dumps(golden, indent=1) + "\n")
    print(name, metrics)


def main():
    rows, materials, categories, suppliers, series, m_index = load()
    split_day = series.shape[1] - 120  # the last 120 days are held out
    onx, X, m = train_price(rows, categories, suppliers, series, m_index, split_day)
    write_model("price", "price", "Fair unit price of a purchase: LightGBM, 300 trees, 20 features.",
                onx, {"features": X[:8]}, m, 256)
    onx, X, m = train_anomaly(rows, series, m_index, split_day)
    write_model("anomaly", "anomaly", "Anomaly score of a price observation (0..1, higher is stranger): isolation forest, 200 trees.",
                onx, {"features": X}, m, 256)
    onx, (H, C), m = train_forecast(series, split_day)
    write_model("forecast", "forecast", "Daily price of a material over the next 7 days from the last 28: MLP 64-32.",
                onx, {"history": H, "calendar": C}, m, 256)


if __name__ == "__main__":
    main()
