"""How a prediction request over HTTP is answered, shared by the gateway and each pipeline's own V2 infer route.

The gateway answers every endpoint; a deployed pipeline's champion also takes
`POST /v2/models/{name}/infer` itself (its application's route prefix), so the
hot path skips the gateway's Ray hand-off. Both go through `answer_prediction`:
the same bearer token, body limit, JSON parsing, error codes and request ids.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.responses import JSONResponse
from starlette.requests import Request

from mlops_assets.core.declaration import PipelineDeclaration
from serving.requests import RequestError, RequestSchema, parse_json

log = logging.getLogger(__name__)
Route = Callable[[list[dict], str, float], Awaitable[dict]]  # (records, request_id, received_at) -> result


class NotReady(RuntimeError):
    """No model loaded for this role (yet), or the pipeline is not deployed; answered with 503."""


def error(status: int, message: str, field: str | None = None, request_id: str | None = None) -> JSONResponse:
    body: dict = {"error": message}
    if field:
        body["field"] = field
    headers = {"X-Request-Id": request_id} if request_id else None
    return JSONResponse(body, status_code=status, headers=headers)


def token_ok(request: Request, env_name: str) -> bool:
    expected = os.environ.get(env_name, "")
    given = request.headers.get("authorization", "")
    return bool(expected) and hmac.compare_digest(given.encode(), f"Bearer {expected}".encode())


def prediction_auth(request: Request, decl: PipelineDeclaration) -> JSONResponse | None:
    """401 when the pipeline's prediction token is set and the request does not carry it."""
    env_name = decl.serving.token_env
    if os.environ.get(env_name) and not token_ok(request, env_name):
        return error(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
    return None


async def json_body(request: Request, decl: PipelineDeclaration) -> Any:
    limit = decl.serving.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"request body of {declared} bytes is larger than the limit of {limit}", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():  # counted as it arrives: a chunked body declares no length
        size += len(chunk)
        if size > limit:
            raise RequestError(f"request body of more than {limit} bytes is larger than the limit of {limit}", status=413)
        chunks.append(chunk)
    return parse_json(b"".join(chunks))


async def answer_prediction(
    request: Request, decl: PipelineDeclaration, schema: RequestSchema, decode: Callable[[Any, RequestSchema], list[dict]], route: Route
) -> tuple[dict, str] | JSONResponse:
    """Auth, body, records, then `route`; a result with its request id, or the error response."""
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    received_at = time.time()
    problem = prediction_auth(request, decl)
    if problem is not None:
        return problem
    try:
        body = await json_body(request, decl)
        records = decode(body, schema)
        if isinstance(body, dict) and isinstance(body.get("id"), str):
            request_id = body["id"]
        result = await route(records, request_id, received_at)
    except RequestError as err:  # the client's mistake: one line in the replica's log, never a traceback
        log.info("request %s to %s refused (%d): %s", request_id, decl.name, err.status, err.message[:200])
        return error(err.status, err.message, err.field, request_id)
    except NotReady as err:
        return error(503, str(err).splitlines()[-1], request_id=request_id)
    except Exception as err:  # a bug or an unavailable backend: answered as a 500 with its reason, never a dead replica
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        log.exception("request %s to %s failed", request_id, decl.name)
        return error(500, f"prediction failed: {reason}", request_id=request_id)
    return result, request_id


def v2_infer_response(name: str, result: dict, request_id: str) -> JSONResponse:
    """An Open Inference Protocol infer response: predictions (and labels, probabilities), the version that made them."""
    n = len(result["predictions"])
    pred_type = "BYTES" if result["predictions"] and isinstance(result["predictions"][0], str) else "FP64"
    outputs = [{"name": "predictions", "shape": [n], "datatype": pred_type, "data": result["predictions"]}]
    if "labels" in result:
        outputs.append({"name": "labels", "shape": [n], "datatype": "BYTES", "data": [str(label) for label in result["labels"]]})
        k = len(result["probabilities"][0]) if n else 0
        flat = [p for row in result["probabilities"] for p in row]
        outputs.append({"name": "probabilities", "shape": [n, k], "datatype": "FP64", "data": flat})
    version = str(result["model_version"])
    body = {"model_name": name, "model_version": version, "id": request_id, "outputs": outputs, "parameters": {"role": result["role"]}}
    return JSONResponse(body, headers={"X-Model-Version": version, "X-Request-Id": request_id})
