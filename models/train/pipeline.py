"""What the training scripts of the feature-pipeline models share: the fixture, the time split, the spec
file, and `mercator features materialize` (the Rust code the server computes its rows with)."""

import csv
import datetime as dt
import hashlib
import json
import os
import pathlib
import subprocess
import tempfile

import numpy as np
import pyarrow.parquet as pq

ROOT = pathlib.Path(__file__).resolve().parents[2]
PRICES = ROOT / "fixtures" / "prices.csv"
SEED = 7
HOLDOUT_DAYS = 120
CALIBRATION_DAYS = 60
# Columns of a materialised frame that are not features.
KEYS = ("observed_on", "material_code", "supplier_code", "unit_price", "is_anomaly")


def toml_value(v):
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)


def fixture_rows():
    with PRICES.open() as f:
        return list(csv.DictReader(f))


def split_dates(rows):
    """(calibration start, holdout start): the last HOLDOUT_DAYS are held out, the CALIBRATION_DAYS before
    them calibrate intervals and thresholds, everything earlier trains."""
    last = max(dt.date.fromisoformat(r["observed_on"]) for r in rows)
    holdout_start = last - dt.timedelta(days=HOLDOUT_DAYS - 1)
    return holdout_start - dt.timedelta(days=CALIBRATION_DAYS), holdout_start


def write_spec(path, head, features):
    lines = [head]
    for f in features:
        lines.append("[[features]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in f.items()]
        lines.append("")
    path.write_text("\n".join(lines))


def materialize(spec):
    """The training frame of the fixture under `spec`: (feature names, X float64, pyarrow table)."""
    binary = os.environ.get("MERCATOR", "cargo run --release --quiet --bin mercator --").split()
    with tempfile.TemporaryDirectory() as tmp:
        frame_path = pathlib.Path(tmp) / "train.parquet"
        subprocess.run(binary + ["features", "materialize", "--spec", str(spec), "--input", str(PRICES),
                        "--output", str(frame_path)], check=True)
        table = pq.read_table(frame_path)
    names = [n for n in table.column_names if n not in KEYS]
    X = np.column_stack([table.column(n).to_numpy() for n in names]).astype(np.float64)
    return names, X, table


def profile(name, version, rows, holdout_start):
    """`mercator features profile`: the version's reference profile (profile.json), from every row before the
    held-out period, binned and calibrated month by month by the Rust code that monitoring compares with."""
    binary = os.environ.get("MERCATOR", "cargo run --release --quiet --bin mercator --").split()
    first = min(r["observed_on"] for r in rows)
    last = (holdout_start - dt.timedelta(days=1)).isoformat()
    subprocess.run(binary + ["features", "profile", "--model", str(ROOT / "models" / name / str(version)),
                    "--input", str(PRICES), "--from", first, "--to", last], check=True)


def spec_sha256(spec):
    return hashlib.sha256(spec.read_bytes()).hexdigest()


def conformal_quantile(scores, level):
    """The split-conformal quantile: the ceil((n+1)·level)-th smallest score."""
    n = len(scores)
    return float(np.quantile(scores, min(1.0, np.ceil((n + 1) * level) / n), method="higher"))


def manifest_head(name, version, kind, description, inputs, outputs, max_batch_size=256, instances=1):
    """model.toml up to [features]: identity, batching, instances, tensors (FP32, batch first)."""
    lines = [
        f'name = "{name}"', f"version = {version}", f'kind = "{kind}"', f"description = {json.dumps(description)}", "",
        "[batching]", f"max_batch_size = {max_batch_size}", "max_queue_delay_us = 0", "queue_capacity = 8192", "",
        "[instances]", f"count = {instances}", "intra_op_threads = 1", "",
    ]
    for section, tensors in (("inputs", inputs), ("outputs", outputs)):
        for tname, width in tensors:
            lines += [f"[[{section}]]", f'name = "{tname}"', 'datatype = "FP32"', f"shape = [-1, {width}]", ""]
    return lines


def write_golden(name, version, inputs, outputs, file_name):
    golden = {
        "model": name, "version": str(version), "tolerance": {"relative": 1e-5},
        "inputs": [{"name": k, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()} for k, v in inputs.items()],
        "outputs": [{"name": k, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()} for k, v in outputs.items()],
    }
    (ROOT / "fixtures" / "golden" / file_name).write_text(json.dumps(golden, indent=1) + "\n")
