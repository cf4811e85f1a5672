"""The HTTP face of serving: Open Inference Protocol (KServe V2) and TF-Serving V1 REST.

One FastAPI ingress for every declared pipeline forwards to that pipeline's
Serve application (its champion, which routes). It owns what is about HTTP: body and batch
limits, JSON parsing, the bearer token for predictions, the admin token, error
codes, request ids, and the OpenAPI document (`/openapi.json`, `/docs`, `/redoc`).
Every answer names the model version that made it (body and `X-Model-Version`).
"""

import asyncio
import logging
import os
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError
from ray.serve.exceptions import RayServeException
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlops_assets.core.feature_contract import load_feature_module
from resources.serving import ServeSettings
from serving import control
from serving.http_answers import (
    NotReady,
    answer_prediction,
    error,
    one_request_id,
    post_only,
    prediction_datatype,
    read_body,
    token_ok,
    v1_predict_response,
    v2_infer_response,
)
from serving.requests import (
    V2_OUT_TYPE,
    Columns,
    RequestError,
    RequestSchema,
    ascii_digits,
    decode_v1,
    decode_v2,
    parse_json,
)

log = logging.getLogger(__name__)

SERVER_NAME = "mlops-serving"
# `/docs` and `/redoc` with their scripts served from here (fastapi-offline): FastAPI's own pages load Swagger UI
# from a CDN, a blank page on a cluster or laptop without the internet
api = FastAPIOffline(
    title="MLOps model serving",
    description="Open Inference Protocol (KServe V2) and TF-Serving style V1 REST for every declared pipeline. "
    "V2 infer takes one input tensor per raw input column; V1 predict takes raw records as `instances`.",
    version="1",
)


@api.exception_handler(StarletteHTTPException)
async def _protocol_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Routing's own answers (no such path, a method a route does not take) in the protocol's error shape,
    `{"error": ...}`, as every other answer: tritonclient reads the `error` key (FastAPI's default is `detail`)."""
    answer = error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")
    answer.headers.update(exc.headers or {})  # 405's Allow
    return answer


class V1PredictRequest(BaseModel):
    instances: list[dict[str, Any]] = Field(description="Raw records: one object per record with every input column.")


class V1PredictResponse(BaseModel):
    predictions: list[Any]
    model_name: str
    model_version: str
    request_id: str
    role: str = Field(description="champion, or canary when the challenger answered")


class V2Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = Field(None, description="The values; absent when they travel as binary data.")
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_size: bytes of this tensor in the binary part (Triton's binary tensor extension)."
    )


class V2RequestedOutput(BaseModel):
    name: str = Field(description="predictions, or for classifiers labels / probabilities.")
    parameters: dict[str, Any] | None = Field(None, description="binary_data: answer this output as binary data.")


class V2InferRequest(BaseModel):
    id: str | None = None
    inputs: list[V2Tensor] = Field(description="One tensor per raw input column, each of shape [n].")
    outputs: list[V2RequestedOutput] | None = Field(None, description="Outputs to answer with (default: all).")
    parameters: dict[str, Any] | None = Field(None, description="binary_data_output: every output as binary data.")


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str
    outputs: list[V2Tensor]


class TrafficRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt setting is refused, not audited as a change of nothing

    canary_share: float | None = Field(None, ge=0.0, le=1.0)
    shadow: bool | None = None
    by: str = Field("admin endpoint", min_length=1, description="Who changes the traffic (audited).")
    reason: str = Field("traffic change through the admin endpoint", min_length=1, description="Why (audited).")

    @model_validator(mode="after")
    def _changes_something(self) -> "TrafficRequest":
        if self.canary_share is None and self.shadow is None:
            raise ValueError("give canary_share and/or shadow")
        return self


def _body_doc(model: type[BaseModel]) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


@serve.deployment
@serve.ingress(api)
class Gateway:
    def __init__(self, settings: dict):
        self.settings = ServeSettings(**settings)
        self.decls = self.settings.declarations()
        self.schemas = {name: RequestSchema.of(d, load_feature_module(d).input_columns(d)) for name, d in self.decls.items()}
        self._handles: dict[str, DeploymentHandle] = {}

    # --- helpers -------------------------------------------------------------------------------

    def _app(self, name: str) -> DeploymentHandle:
        if name not in self._handles:
            try:
                # by value over Serve's inter-deployment gRPC, not through Ray's object store: V1 single-row
                # c=16 397 -> 662 req/s, c=1 p50 4.85 -> 4.35 ms (`mlops bench serving`, the transport Serve's
                # RAY_SERVE_THROUGHPUT_OPTIMIZED picks); a dead replica still surfaces as ActorUnavailableError
                self._handles[name] = serve.get_app_handle(name).options(_by_reference=False)
            except RayServeException:
                raise NotReady(
                    f"model '{name}' is not deployed yet: its deployment asset rolls it out once a champion is promoted"
                ) from None
        return self._handles[name]

    def _unknown(self, name: str) -> JSONResponse | None:
        if name in self.decls:
            return None
        return error(404, f"unknown model '{name}'; served models: {', '.join(sorted(self.decls)) or 'none'}", "name")

    def _admin_auth(self, request: Request, name: str) -> JSONResponse | None:
        env_name = self.decls[name].serving.admin_token_env
        if not os.environ.get(env_name):
            return error(403, f"admin endpoints are disabled: no admin token configured (${env_name})")
        if not token_ok(request, env_name):
            return error(401, "admin endpoints need the admin bearer token (Authorization: Bearer <token>)")
        return None

    async def _status(self, name: str) -> dict | None:
        try:
            return await self._app(name).pipeline_status.remote()
        except Exception:  # app not deployed (yet) or being replaced: reported as not ready
            return None

    async def _predict(self, request: Request, name: str, decode, version: int | None = None) -> tuple | JSONResponse:
        problem = self._unknown(name)
        if problem is not None:
            return problem

        async def route(records: list[dict] | Columns, request_id: str, received_at: float) -> dict:
            handle = self._app(name)
            try:
                answer = await handle.route_answer.remote(records, request_id, received_at, version)
            except (ActorDiedError, ActorUnavailableError):  # its replica died under it: a prediction is safe to ask again
                log.warning("request %s to %s: the replica died; asking another", request_id, name)
                answer = await handle.route_answer.remote(records, request_id, received_at, version)
            if isinstance(answer, BaseException):  # a refusal, answered as such here (4xx, 503)
                raise answer
            return answer

        return await answer_prediction(request, self.decls[name], self.schemas[name], decode, route)

    # --- Open Inference Protocol (KServe V2) ---------------------------------------------------

    @api.get("/v2/health/live", tags=["v2"])
    async def live(self) -> dict:
        return {"live": True}

    @api.get("/v2/health/ready", tags=["v2"])
    async def ready(self):
        statuses = await asyncio.gather(*[self._status(n) for n in self.decls])
        models = {n: bool(s and s["ready"]) for n, s in zip(self.decls, statuses)}
        ready = bool(models) and all(models.values())
        return JSONResponse({"ready": ready, "models": models}, status_code=200 if ready else 503)

    @api.get("/v2", tags=["v2"])
    async def server_metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": "2", "extensions": ["binary_tensor_data"], "models": sorted(self.decls)}

    @api.get("/v2/models/{name}", tags=["v2"])
    async def model_metadata(self, name: str):
        problem = self._unknown(name)
        if problem is not None:
            return problem
        decl, schema = self.decls[name], self.schemas[name]
        status = await self._status(name)
        version = status["champion"]["model_version"] if status else None
        classes = decl.target_classes
        predicted = prediction_datatype(classes[0]) if decl.target.task == "multiclass" and classes else "FP64"
        outputs = [{"name": "predictions", "datatype": predicted, "shape": [-1]}]
        if decl.target.task != "regression":
            outputs += [
                {"name": "labels", "datatype": "BYTES", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP64", "shape": [-1, len(decl.target_classes)]},
            ]
        return {
            "name": name,
            "versions": [str(version)] if version is not None else [],
            "platform": "lightgbm",
            "task": decl.target.task,
            "inputs": [
                {"name": c, "datatype": V2_OUT_TYPE.get(s.type, "FP64" if s.type.startswith("float") else s.type.upper()), "shape": [-1]}
                for c, s in schema.columns.items()
            ],
            "outputs": outputs,
        }

    @api.get("/v2/models/{name}/ready", tags=["v2"])
    async def model_ready(self, name: str):
        problem = self._unknown(name)
        if problem is not None:
            return problem
        status = await self._status(name)
        ready = bool(status and status["ready"])
        version = status["champion"]["model_version"] if status else None
        body = {"name": name, "ready": ready, "model_version": None if version is None else str(version)}
        return JSONResponse(body, status_code=200 if ready else 503)

    @api.post("/v2/models/{name}/infer", tags=["v2"], response_model=V2InferResponse, openapi_extra=_body_doc(V2InferRequest))
    async def infer(self, name: str, request: Request):
        return await self._infer(name, request, None)

    @api.post(
        "/v2/models/{name}/versions/{version}/infer", tags=["v2"], response_model=V2InferResponse, openapi_extra=_body_doc(V2InferRequest)
    )
    async def infer_version(self, name: str, version: str, request: Request):
        """Pinned to one version: answered by whichever of champion and challenger holds it, else 404."""
        if not ascii_digits(version) or version != str(int(version)):  # `01` is no version here, as for /ready
            return error(404, f"model versions are numbers as the registry writes them, got '{version[:40]}'", "version")
        return await self._infer(name, request, int(version))

    @api.get("/v2/models/{name}/versions/{version}", tags=["v2"])
    async def version_metadata(self, name: str, version: str):
        found = await self._served_version(name, version)
        if isinstance(found, JSONResponse):
            return found
        meta = await self.model_metadata(name)
        return {**meta, "versions": [version]}

    @api.get("/v2/models/{name}/versions/{version}/ready", tags=["v2"])
    async def version_ready(self, name: str, version: str):
        found = await self._served_version(name, version)
        if isinstance(found, JSONResponse):
            return found
        return {"name": name, "ready": True, "model_version": version, "role": found}

    async def _served_version(self, name: str, version: str) -> str | JSONResponse:
        """The role serving `version` now, or a 404 naming what is served."""
        problem = self._unknown(name)
        if problem is not None:
            return problem
        status = await self._status(name) or {}
        served = {
            str(status[role]["model_version"]): role
            for role in ("champion", "challenger")
            if status.get(role) and status[role]["model_version"] is not None
        }
        if version not in served:
            listing = ", ".join(f"{role} v{v}" for v, role in served.items()) or "none"
            return error(404, f"version {version} of {name} is not being served (served: {listing})", "version")
        return served[version]

    async def _infer(self, name: str, request: Request, version: int | None):
        answer = await self._predict(request, name, decode_v2, version)
        if isinstance(answer, JSONResponse):
            return answer
        return one_request_id(v2_infer_response(name, *answer), request)

    # --- TF-Serving style V1 -------------------------------------------------------------------

    @api.get("/v1/models/{name}", tags=["v1"])
    async def v1_status(self, name: str):
        if name.endswith(":predict"):  # the predict URL asked with GET (this route's `{name}` takes the colon too)
            return post_only("GET", f"/v1/models/{name}", "predict")
        problem = self._unknown(name)
        if problem is not None:
            return problem
        status = await self._status(name)
        version = status["champion"]["model_version"] if status else None
        state = "AVAILABLE" if status and status["ready"] else "UNAVAILABLE"
        return {"model_version_status": [{"version": "" if version is None else str(version), "state": state}]}

    @api.post("/v1/models/{name}:predict", tags=["v1"], response_model=V1PredictResponse, openapi_extra=_body_doc(V1PredictRequest))
    async def v1_predict(self, name: str, request: Request):
        """Answered here for a pipeline without `serving.v1_route` (or until its V1 route's application is up);
        otherwise the ingress sends this path straight to that application's champion replicas."""
        answer = await self._predict(request, name, decode_v1)
        if isinstance(answer, JSONResponse):
            return answer
        return one_request_id(v1_predict_response(name, *answer[:2]), request)

    # --- admin (token required) ----------------------------------------------------------------

    @api.get("/admin/models/{name}/status", tags=["admin"])
    async def admin_status(self, name: str, request: Request):
        problem = self._unknown(name) or self._admin_auth(request, name)
        if problem is not None:
            return problem
        return await self._status(name) or error(503, f"model '{name}' is not deployed")

    @api.post("/admin/models/{name}/traffic", tags=["admin"], openapi_extra=_body_doc(TrafficRequest))
    async def admin_traffic(self, name: str, request: Request):
        problem = self._unknown(name) or self._admin_auth(request, name)
        if problem is not None:
            return problem
        try:
            body = TrafficRequest.model_validate(parse_json(await read_body(request, self.decls[name])))
        except RequestError as err:
            return error(err.status, err.message)
        except ValueError as err:
            return error(400, f"bad traffic settings: {err}")
        try:
            applied = await asyncio.to_thread(
                control.set_traffic, name, body.canary_share, body.shadow, settings=self.settings, actor=body.by, reason=body.reason
            )
        except (control.NotGated, control.RolloutInProgress) as err:
            return error(409, str(err))
        except LookupError as err:  # not deployed (yet): as a reload answers
            return error(409, str(err))
        return {"model_name": name, "traffic": applied}

    @api.post("/admin/models/{name}/reload", tags=["admin"])
    async def admin_reload(self, name: str, request: Request):
        """Point the application at the versions the `champion`/`challenger` aliases name now."""
        problem = self._unknown(name) or self._admin_auth(request, name)
        if problem is not None:
            return problem
        try:
            versions = await asyncio.to_thread(control.follow_aliases, self.decls[name], self.settings)
        except LookupError as err:
            return error(409, str(err))
        return {"model_name": name, **versions}
