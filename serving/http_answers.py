"""How a prediction request over HTTP is answered, shared by the gateway and each pipeline's own routes.

The gateway answers every endpoint; a deployed pipeline's champion also takes
`POST /v2/models/{name}/infer` itself (its application's route prefix), and the
V1 route's champion group `POST /v1/models/{name}:predict`, so the hot paths skip
the gateway's Ray hand-off. All go through `answer_prediction`:
the same bearer token, body limit, JSON parsing, error codes and request ids.
"""

from __future__ import annotations

import hmac
import logging
import os
import struct
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import numpy as np
from fastapi.responses import JSONResponse, Response
from starlette.requests import Request

from mlops_assets.core.declaration import PipelineDeclaration
from serving.requests import BINARY_HEADER, Columns, Decoded, RequestError, RequestSchema, ascii_digits

log = logging.getLogger(__name__)
Route = Callable[[list[dict] | Columns, str, float], Awaitable[dict]]  # (records or columns, request_id, received_at) -> result
Decoder = Callable[[bytes, Any, RequestSchema], Decoded]  # (body, headers, schema) -> records and the answer's shape


class NotReady(RuntimeError):
    """No model loaded for this role (yet), or the pipeline is not deployed; answered with 503."""


class JSONAnswer(JSONResponse):
    """A JSON response encoded by msgspec: the bench's 10,000-row answer in 0.2 ms instead of the json module's 3.4
    (timed by hand). A NaN or infinity, which JSON cannot carry, is written as null."""

    def render(self, content: Any) -> bytes:
        return msgspec.json.encode(content)


def error(status: int, message: str, field: str | None = None, request_id: str | None = None) -> JSONResponse:
    body: dict = {"error": message}
    if field:
        body["field"] = field
    headers = {"X-Request-Id": request_id} if request_id else None
    return JSONAnswer(body, status_code=status, headers=headers)


def one_request_id(response: Response, request: Request) -> Response:
    """The answer without an X-Request-Id equal to the request's own: Serve's ingress (Ray's `RequestIdMiddleware`,
    in its proxy and in each direct-ingress replica) answers every request with the X-Request-Id it arrived with,
    or writes the one it generates into the request's headers and answers that. A second, equal header made
    every client read the id twice (`requests` and `httpx` join them: `"<id>, <id>"`). An id of the request's
    body (V2 `id`, V1 `request_id`) other than the header's is still answered here, beside Serve's."""
    inbound = request.headers.get("x-request-id")
    if inbound is not None and response.headers.get("x-request-id") == inbound:
        del response.headers["x-request-id"]
    return response


def post_only(method: str, path: str, what: str) -> JSONResponse:
    """405 for a prediction route asked with another method, with the `Allow` header HTTP requires."""
    answer = error(405, f"{method} {path}: {what} takes POST")
    answer.headers["Allow"] = "POST"
    return answer


def token_ok(request: Request, env_name: str) -> bool:
    """`Authorization: Bearer <token>`, the scheme in any case (RFC 7235: `bearer` was refused)."""
    expected = os.environ.get(env_name, "")
    scheme, _, given = request.headers.get("authorization", "").strip().partition(" ")
    return bool(expected) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode())


def prediction_auth(request: Request, decl: PipelineDeclaration) -> JSONResponse | None:
    """401 when the pipeline's prediction token is set and the request does not carry it."""
    env_name = decl.serving.token_env
    if os.environ.get(env_name) and not token_ok(request, env_name):
        return error(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
    return None


async def read_body(request: Request, decl: PipelineDeclaration) -> bytes:
    """The body within `serving.max_body_bytes`, counted as it arrives (a chunked body declares no length)
    and again after a gzip or deflate `Content-Encoding` is undone."""
    limit = decl.serving.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and ascii_digits(declared) and int(declared) > limit:
        raise RequestError(f"request body of {declared} bytes is larger than the limit of {limit}", status=413)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity", "gzip", "deflate"):
        raise RequestError(f"Content-Encoding {encoding[:40]} is not supported (gzip, deflate or none)", status=415)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"request body of more than {limit} bytes is larger than the limit of {limit}", status=413)
        chunks.append(chunk)
    raw = b"".join(chunks)
    return inflated(raw, encoding, limit) if encoding in ("gzip", "deflate") else raw


def inflated(data: bytes, encoding: str, limit: int) -> bytes:
    """A gzip or deflate body inflated, within `limit` bytes. A gzip body may hold several members (RFC 1952: they
    read as one text); anything else after the compressed data is refused, not dropped."""
    parts: list[bytes] = []
    size = 0
    while True:
        inflate = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
        try:
            part = inflate.decompress(data, limit + 1 - size)
        except zlib.error as err:
            raise RequestError(f"request body is not valid {encoding} data: {err}") from None
        size += len(part)
        if size > limit or inflate.unconsumed_tail:
            raise RequestError(f"request body inflates to more than the limit of {limit} bytes", status=413)
        if not inflate.eof:
            raise RequestError(f"request body is not valid {encoding} data: the stream ends early")
        parts.append(part)
        data = inflate.unused_data
        if not data:
            return b"".join(parts)
        if encoding != "gzip":
            raise RequestError(f"request body has {len(data)} bytes after its deflate stream")


async def answer_prediction(
    request: Request, decl: PipelineDeclaration, schema: RequestSchema, decode: Decoder, route: Route
) -> tuple[dict, str, Decoded] | JSONResponse:
    """Auth, body, records, then `route`; a result with its request id and the decoded request, or the error response."""
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    received_at = time.time()
    problem = prediction_auth(request, decl)
    if problem is not None:
        return problem
    try:
        decoded = decode(await read_body(request, decl), request.headers, schema)
        request_id = decoded.request_id or request_id
        result = await route(decoded.records, request_id, received_at)
    except RequestError as err:  # the client's mistake: one line in the replica's log, never a traceback
        log.info("request %s to %s refused (%d): %s", request_id, decl.name, err.status, err.message[:200])
        return one_request_id(error(err.status, err.message, err.field, request_id), request)
    except NotReady as err:
        return one_request_id(error(503, str(err).splitlines()[-1], request_id=request_id), request)
    except Exception as err:  # a bug or an unavailable backend: answered as a 500 with its reason, never a dead replica
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        log.exception("request %s to %s failed", request_id, decl.name)
        return one_request_id(error(500, f"prediction failed: {reason}", request_id=request_id), request)
    return result, request_id, decoded


def prediction_datatype(value) -> str:
    """A prediction's V2 datatype: a class name is BYTES, an integer class INT64 (its metadata says the same),
    a score FP64."""
    if isinstance(value, str):
        return "BYTES"
    return "INT64" if isinstance(value, int | np.integer) and not isinstance(value, bool) else "FP64"


def _v2_outputs(result: dict) -> dict[str, dict]:
    n = len(result["predictions"])
    pred_type = prediction_datatype(result["predictions"][0]) if result["predictions"] else "FP64"
    outputs = {"predictions": {"name": "predictions", "shape": [n], "datatype": pred_type, "data": result["predictions"]}}
    if "labels" in result:
        outputs["labels"] = {"name": "labels", "shape": [n], "datatype": "BYTES", "data": [str(label) for label in result["labels"]]}
        k = len(result["probabilities"][0]) if n else 0
        flat = [p for row in result["probabilities"] for p in row]
        outputs["probabilities"] = {"name": "probabilities", "shape": [n, k], "datatype": "FP64", "data": flat}
    return outputs


def _binary(output: dict) -> bytes:
    if output["datatype"] == "BYTES":
        encoded = [str(v).encode() for v in output["data"]]
        return b"".join(struct.pack("<I", len(e)) + e for e in encoded)
    return np.asarray(output["data"], dtype="<i8" if output["datatype"] == "INT64" else "<f8").tobytes()


def v2_infer_response(name: str, result: dict, request_id: str, decoded: Decoded | None = None) -> Response:
    """An Open Inference Protocol infer response: predictions (and labels, probabilities), the version that made them;
    the outputs asked for, each as JSON data or, where asked, as binary data after the JSON (Triton's extension)."""
    every = _v2_outputs(result)
    wanted = decoded.outputs if decoded and decoded.outputs else tuple((n, False) for n in every)
    outputs, tail = [], []
    for output_name, binary in wanted:
        output = every.get(output_name)
        if output is None:  # a task without it (asked for by name): nothing to send
            continue
        if binary:
            data = _binary(output)
            output = {k: v for k, v in output.items() if k != "data"} | {"parameters": {"binary_data_size": len(data)}}
            tail.append(data)
        outputs.append(output)
    version = str(result["model_version"])
    body = {"model_name": name, "model_version": version, "id": request_id, "outputs": outputs, "parameters": {"role": result["role"]}}
    headers = {"X-Model-Version": version, "X-Request-Id": request_id}
    if not tail:
        return JSONAnswer(body, headers=headers)
    header = msgspec.json.encode(body)
    headers[BINARY_HEADER] = str(len(header))
    return Response(header + b"".join(tail), media_type="application/octet-stream", headers=headers)


def v1_predict_response(name: str, result: dict, request_id: str) -> Response:
    """A TF-Serving style predict response: predictions (and probabilities), the version and role that made them."""
    version = str(result["model_version"])
    body = {
        "predictions": result["predictions"],
        "model_name": name,
        "model_version": version,
        "request_id": request_id,
        "role": result["role"],
    }
    if "probabilities" in result:
        body["probabilities"] = result["probabilities"]
    return JSONAnswer(body, headers={"X-Model-Version": version, "X-Request-Id": request_id})
