"""The Python peer of the load benchmark: what a team puts in front of ONNX Runtime when it writes its own
service. FastAPI on uvicorn (uvloop, httptools), run by benches/load.sh with two worker processes, each
holding one ONNX Runtime session of the same model (one intra-op and one inter-op thread, no spinning: as
the naive server and Mercator run it). It answers the same V2 request with the same JSON, and compares the
bearer key as the others check theirs.

    PEER_MODEL=models/price/1/model.onnx API_KEY=… uvicorn fastapi_peer:app --workers 2 --port 8104
"""

import json
import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request
from fastapi.responses import Response

KEY = f"Bearer {os.environ['API_KEY']}"
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
options.add_session_config_entry("session.intra_op.allow_spinning", "0")
session = ort.InferenceSession(os.environ["PEER_MODEL"], options, providers=["CPUExecutionProvider"])
OUTPUTS = [o.name for o in session.get_outputs()]
app = FastAPI()


@app.post("/v2/models/{name}/versions/{version}/infer")
async def infer(name: str, version: str, request: Request) -> Response:
    if request.headers.get("authorization") != KEY:
        return Response(status_code=401)
    body = json.loads(await request.body())
    feeds = {t["name"]: np.asarray(t["data"], dtype=np.float32).reshape(t["shape"]) for t in body["inputs"]}
    results = session.run(None, feeds)
    outputs = [{"name": n, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()}
               for n, v in zip(OUTPUTS, results)]
    answer = {"model_name": name, "model_version": version, "outputs": outputs}
    return Response(json.dumps(answer), media_type="application/json")
