"""A model made by another tool than Mercator's own training scripts: a scikit-learn random forest converted
with skl2onnx as it comes (its own graph, its own output name), with a manifest and golden vectors computed
by scikit-learn itself.

    python sklearn_model.py OUT_DIR
"""

import json
import pathlib
import sys

import numpy as np
from skl2onnx import to_onnx
from sklearn.ensemble import RandomForestRegressor

out = pathlib.Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(7)
x = rng.normal(size=(400, 5)).astype(np.float32)
y = x[:, 0] * 3 + np.sin(x[:, 1]) - x[:, 2] * x[:, 3] + rng.normal(scale=0.1, size=400)
forest = RandomForestRegressor(n_estimators=25, max_depth=6, random_state=0).fit(x, y)
onnx = to_onnx(forest, x[:1], target_opset=15)
(out / "model.onnx").write_bytes(onnx.SerializeToString())
output = onnx.graph.output[0].name
(out / "model.toml").write_text(f"""name = "forest"
version = 1
kind = "generic"
description = "scikit-learn RandomForestRegressor, 25 trees, converted by skl2onnx"

[batching]
max_batch_size = 32
max_queue_delay_us = 0
queue_capacity = 1024

[instances]
count = 1
intra_op_threads = 1

[[inputs]]
name = "{onnx.graph.input[0].name}"
datatype = "FP32"
shape = [-1, 5]

[[outputs]]
name = "{output}"
datatype = "FP32"
shape = [-1, 1]
""")
probe = x[:8]
golden = {
    "inputs": [{"name": onnx.graph.input[0].name, "datatype": "FP32", "shape": [8, 5], "data": probe.ravel().tolist()}],
    "outputs": [{"name": output, "data": forest.predict(probe).astype(np.float32).tolist()}],
}
(out / "golden.json").write_text(json.dumps(golden))
print("written", out)
