"""The reference server for benchmarks/agent_http.py: FastAPI on uvicorn, same inference.

It does what a user would write by hand: parse the JSON body, make a float32 array, run the
onnxruntime session (one intra-op thread, like the agent in the benchmark), return the outputs
by name as lists. It validates less than the agent does (no reference-range or NaN checks).

    python benchmarks/reference_fastapi.py MODEL.onnx --port 8000
"""
# No `from __future__ import annotations` here: FastAPI reads the handler's annotations at run
# time, and a string "Request" would turn the parameter into a query field.
import argparse

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def make_app(model_path: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    input_name = sess.get_inputs()[0].name
    output_names = [o.name for o in sess.get_outputs()]
    app = FastAPI()

    @app.get("/healthz")
    def healthz():
        return {"ok": True}

    @app.post("/v1/predict")
    async def predict(request: Request):
        body = await request.json()
        x = np.asarray(body["inputs"], dtype=np.float32)
        outputs = sess.run(None, {input_name: x})
        return JSONResponse({"outputs": {n: o.tolist() for n, o in zip(output_names, outputs)}})

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args()
    import uvicorn

    uvicorn.run(make_app(args.model), host="127.0.0.1", port=args.port, workers=1, log_level="warning",
                http="httptools", access_log=False)


if __name__ == "__main__":
    main()
