"""The plain baseline of `mlops bench serving`: one uvicorn process, FastAPI, `Booster.predict`.

What a user writes in ten lines: load the LightGBM text model once, take feature rows in
MLflow's `dataframe_split` layout, answer `{"predictions": [...]}`. No validation beyond
the column names, no features, no logging. `NAIVE_MODEL_FILE` names the model file.

    NAIVE_MODEL_FILE=model.lgb uvicorn mlops_assets.cli.bench.naive_app:app --port 18433 --no-access-log
"""

from __future__ import annotations

import json
import os

import lightgbm as lgb
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

app = FastAPI()
booster = lgb.Booster(model_file=os.environ["NAIVE_MODEL_FILE"])
columns = booster.feature_name()


@app.get("/ping")
def ping() -> Response:
    return Response("ok")


@app.post("/invocations")
async def invocations(request: Request) -> Response:
    split = json.loads(await request.body())["dataframe_split"]
    if split["columns"] != columns:
        return JSONResponse({"error": f"expected columns {columns}"}, status_code=400)
    x = np.asarray(split["data"], dtype=np.float64)
    return JSONResponse({"predictions": booster.predict(x, num_threads=1).tolist()})
