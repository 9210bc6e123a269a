"""NVIDIA's tritonclient against a running Mercator: JSON and binary inference equal to the golden vectors,
the model configuration, and statistics that count exactly the requests sent here.

    MERCATOR_KEY=<api key> python tritonclient_check.py HOST:PORT FIXTURES_GOLDEN_DIR

Every call carries the key the way any tritonclient user passes one: `headers=`.
"""

import json
import os
import pathlib
import sys

import numpy as np
import tritonclient.http as httpclient

url, golden_dir = sys.argv[1], pathlib.Path(sys.argv[2])
H = {"Authorization": "Bearer " + os.environ["MERCATOR_KEY"]}
client = httpclient.InferenceServerClient(url=url)
try:
    client.get_server_metadata()
    raise AssertionError("a request without a key must be refused")
except httpclient.InferenceServerException as e:
    assert "API key" in e.message(), e.message()
assert client.is_server_live(headers=H) and client.is_server_ready(headers=H)
assert client.is_model_ready("price", headers=H)
meta = client.get_server_metadata(headers=H)
assert "statistics" in meta["extensions"], meta

sent = {}
for model in ["price", "anomaly", "forecast"]:
    golden = json.loads((golden_dir / f"{model}.json").read_text())
    config = client.get_model_config(model, model_version="1", headers=H)
    assert config["max_batch_size"] >= 1, config
    assert [i["dims"] for i in config["input"]] == [[g["shape"][1]] for g in golden["inputs"]], config
    before = client.get_inference_statistics(model, model_version="1", headers=H)["model_stats"][0]["inference_stats"]["success"]["count"]
    for binary in (False, True):
        inputs = []
        for g in golden["inputs"]:
            t = httpclient.InferInput(g["name"], g["shape"], g["datatype"])
            t.set_data_from_numpy(np.asarray(g["data"], dtype=np.float32).reshape(g["shape"]), binary_data=binary)
            inputs.append(t)
        outputs = [httpclient.InferRequestedOutput(o["name"], binary_data=binary) for o in golden["outputs"]]
        result = client.infer(model, inputs, outputs=outputs, model_version="1", headers=dict(H))  # infer() writes into the dict it gets
        for o in golden["outputs"]:
            got = result.as_numpy(o["name"])
            want = np.asarray(o["data"], dtype=np.float32).reshape(o["shape"])
            assert got.shape == want.shape, (model, got.shape, want.shape)
            np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=f"{model} binary={binary}")
    stats = client.get_inference_statistics(model, model_version="1", headers=H)["model_stats"][0]
    after = stats["inference_stats"]["success"]["count"]
    assert after - before == 2, (model, before, after)
    sent[model] = after - before

try:
    client.get_model_metadata("no-such-model", headers=H)
    raise AssertionError("an unknown model must be an error")
except httpclient.InferenceServerException as e:
    assert "no-such-model" in e.message(), e.message()

print("tritonclient ok", sent)
