"""A client's mistake is answered 4xx and logged as one line, never a traceback."""

from __future__ import annotations

import asyncio
import json
import logging

from starlette.requests import Request

from mlops_assets.core.feature_contract import load_feature_module
from serving.http_answers import answer_prediction, inflated, token_ok
from serving.requests import RequestError, RequestSchema, decode_v1, decode_v2
from tests.support.models import flights_variant


def _request(body: bytes) -> Request:
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/v1/models/flights:predict", "headers": [(b"content-type", b"application/json")]}
    return Request(scope, receive)


def test_a_refused_request_is_one_log_line_and_a_400(caplog, monkeypatch):
    monkeypatch.delenv("MLOPS_SERVE_TOKEN", raising=False)  # the session's Serve sets one; this request carries none
    decl = flights_variant()
    schema = RequestSchema.of(decl, load_feature_module(decl).input_columns(decl))

    async def never(*args):
        raise AssertionError("a refused request must not be routed")

    with caplog.at_level(logging.INFO, logger="serving.http_answers"):
        answer = asyncio.run(answer_prediction(_request(b'{"instances": [' + b"[" * 100_000), decl, schema, decode_v1, never))
    assert answer.status_code == 400 and "nests too deeply" in json.loads(answer.body)["error"]
    records = [r for r in caplog.records if r.name == "serving.http_answers"]
    assert len(records) == 1 and records[0].exc_info is None and "refused (400)" in records[0].getMessage()


def _answering(monkeypatch):
    """The flights declaration, its request schema, and a route that notes the id of each request it is handed."""
    monkeypatch.delenv("MLOPS_SERVE_TOKEN", raising=False)  # the session's Serve sets one; these requests carry none
    decl = flights_variant()
    schema = RequestSchema.of(decl, load_feature_module(decl).input_columns(decl))
    routed: list[str] = []

    async def route(records, request_id, received):
        routed.append(request_id)
        return {"predictions": [1.0] * len(records), "model_version": 1, "role": "champion"}

    return decl, schema, route, routed


def test_a_v1_bodys_request_id_is_the_requests_id(monkeypatch):
    """KServe V1 bodies may carry `request_id`: it names the request in the answer and the prediction log, as V2's
    `id` does (it was accepted and ignored: the answer carried a generated id), and one HTTP cannot carry is a 400."""
    from tests.support.serving import request_records

    decl, schema, route, routed = _answering(monkeypatch)

    def answer(body: dict):
        return asyncio.run(answer_prediction(_request(json.dumps(body).encode()), decl, schema, decode_v1, route))

    records = request_records(2)
    assert answer({"instances": records, "request_id": "order-17"})[1] == "order-17"
    bad = answer({"instances": records, "request_id": "a\r\nSet-Cookie: x=1"})
    assert bad.status_code == 400 and json.loads(bad.body)["error"].startswith("request_id must be printable Latin-1 text")
    assert answer({"instances": records})[1] not in ("", "order-17")  # none: the header's, else a generated one
    assert routed[0] == "order-17" and len(routed) == 2


def _v2_request(body: bytes, headers: dict | None = None) -> Request:
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    pairs = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "POST", "path": "/v2/models/flights/infer", "headers": pairs}, receive)


def _v2_body(schema: RequestSchema, **extra) -> dict:
    from tests.support.serving import request_records

    (record,) = request_records(1)
    datatype = {"str": "BYTES", "datetime": "BYTES", "float64": "FP64"}
    inputs = [
        {"name": c, "shape": [1], "datatype": datatype.get(spec.type, "INT64"), "data": [record[c]]} for c, spec in schema.columns.items()
    ]
    return {"inputs": inputs, **extra}


def test_v2_mistakes_that_were_answered_500_or_worse_are_400s(monkeypatch):
    """Each reached a 500 or a replica's memory: an id HTTP cannot carry back in X-Request-Id (the prediction was
    logged, then the answer failed), an output asked for 2,000 times (answered 2,000 times), a byte count of
    5,000 digits, data after a gzip stream (dropped)."""
    import gzip

    decl, schema, route, routed = _answering(monkeypatch)

    def answer(body: bytes, headers: dict | None = None):
        return asyncio.run(answer_prediction(_v2_request(body, headers), decl, schema, decode_v2, route))

    def refused(body: bytes, headers: dict | None = None) -> str:
        result = answer(body, headers)
        assert not isinstance(result, tuple) and result.status_code == 400, result
        return json.loads(result.body)["error"]

    good = json.dumps(_v2_body(schema)).encode()
    for bad_id in ("req-\u20ac", "a\r\nSet-Cookie: x=1", "x" * 300):
        assert refused(json.dumps(_v2_body(schema, id=bad_id)).encode()).startswith("id must be printable Latin-1 text")
    assert answer(json.dumps(_v2_body(schema, id="caf\u00e9-7")).encode())[1] == "caf\u00e9-7"  # Latin-1 travels
    twice = _v2_body(schema, outputs=[{"name": "predictions"}] * 2000)
    assert refused(json.dumps(twice).encode()) == "output 'predictions' is asked for twice"
    top2 = _v2_body(schema, outputs=[{"name": "predictions", "parameters": {"classification": 2}}])
    assert refused(json.dumps(top2).encode()).startswith("outputs[0].parameters.classification: Triton's classification extension")
    assert refused(good, {"Inference-Header-Content-Length": "9" * 5000}).startswith("Inference-Header-Content-Length must be a byte count")
    assert routed == ["caf\u00e9-7"], "no refused request was routed"

    limit = decl.serving.max_body_bytes
    half = len(good) // 2
    members = gzip.compress(good[:half]) + gzip.compress(good[half:])  # RFC 1952: one text
    assert inflated(members, "gzip", limit) == good
    for tail in (b"GARBAGE", gzip.compress(good)[:20]):
        try:
            inflated(gzip.compress(good) + tail, "gzip", limit)
        except RequestError as err:
            assert err.status == 400 and "not valid gzip data" in err.message
        else:
            raise AssertionError("data after the gzip stream was dropped")


def _asgi(app, method: str, path: str) -> tuple[int, dict, dict]:
    """One request through an ASGI app, in-process: status, headers, JSON body."""
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"", "headers": []}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, json.loads(body)


def test_routing_answers_in_the_protocols_error_shape():
    """No such path, or a method a route does not take: `{"error": ...}` as every other answer (tritonclient reads
    `error`), with the Allow header a 405 needs; a version of 5,000 digits is no version (it was a 500)."""
    from serving.gateway import api
    from serving.requests import ascii_digits

    status, headers, body = _asgi(api, "GET", "/v2/models/flights/versions/1/infer")
    assert (status, headers["allow"], body) == (405, "POST", {"error": "GET /v2/models/flights/versions/1/infer: Method Not Allowed"})
    status, _, body = _asgi(api, "POST", "/v2/models/flights/versions/1/infer/more")
    assert (status, body) == (404, {"error": "POST /v2/models/flights/versions/1/infer/more: Not Found"})
    assert ascii_digits("123") and not ascii_digits("9" * 5000) and not ascii_digits("\u00b2")


def test_a_float_beyond_what_a_float_holds_is_typed_as_ingestion_types_it_not_a_500():
    """An integer too large for a float in a float column without a maximum went through the few-rows path and failed
    building the batch's frame (OverflowError: a 500, logged as the model's failure). Ingestion reads it as inf."""
    from mlops_assets.core.declaration import load_declaration
    from serving.requests import Columns, request_frame, typed_request

    decl = load_declaration("tests/pipelines/telemetry.yaml")
    schema = RequestSchema.of(decl, load_feature_module(decl).input_columns(decl))
    for huge, read in ((2**70, float(2**70)), (10**400, float("inf"))):  # beyond int64; beyond a float
        record = {"machine_id": "m1", "reading_time": "2024-03-03T05:00:00Z", "temperature": 20.0, "vibration": huge}
        for rows in (1, 100):
            typed = typed_request(Columns({c: [record[c]] * rows for c in schema.columns}, rows), schema)
            assert request_frame([typed], schema).get_column("vibration").to_list() == [read] * rows


def test_integer_classes_are_answered_as_the_metadata_describes_them():
    """Metadata said BYTES for a multiclass model's predictions while the answer said FP64 for integer classes; both
    now take the datatype from the class (INT64 here), in JSON and in binary."""
    import numpy as np

    from serving.http_answers import prediction_datatype, v2_infer_response
    from serving.requests import Columns, Decoded

    assert [prediction_datatype(c) for c in (2, "late", 0.7, True)] == ["INT64", "BYTES", "FP64", "FP64"]
    result = {
        "predictions": [2, 0],
        "labels": [2, 0],
        "probabilities": [[0.1, 0.2, 0.7], [0.8, 0.1, 0.1]],
        "model_version": 1,
        "role": "champion",
    }
    answer = json.loads(v2_infer_response("m", dict(result), "r").body)
    assert answer["outputs"][0] == {"name": "predictions", "shape": [2], "datatype": "INT64", "data": [2, 0]}
    binary = Decoded(Columns({}, 2), None, (("predictions", True),))
    raw = v2_infer_response("m", dict(result), "r", binary)
    header = int(raw.headers["Inference-Header-Content-Length"])
    assert json.loads(raw.body[:header])["outputs"][0]["datatype"] == "INT64"
    assert np.frombuffer(raw.body[header:], dtype="<i8").tolist() == [2, 0]


def test_a_request_mixing_valid_time_forms_is_answered_whatever_its_size():
    from serving.requests import request_frame, typed_request
    from tests.support.serving import request_records

    decl = flights_variant()
    schema = RequestSchema.of(decl, load_feature_module(decl).input_columns(decl))
    for size in (2, 21):
        records = request_records(size)
        records[-1] = {**records[-1], "time_hour": records[-1]["time_hour"].replace("T", " ").removesuffix("Z")}
        frame = request_frame([typed_request(records, schema)], schema)
        assert frame.get_column("time_hour").null_count() == 0 and frame.height == size


def test_an_answer_carries_the_request_id_once_behind_serves_ingress(monkeypatch):
    """Serve's ingress (Ray's RequestIdMiddleware, in its proxy and in each direct-ingress replica) answers every
    request with the X-Request-Id it came with, or one it generated and wrote into the request: answers that set
    the same header again reached clients as `"<id>, <id>"` (what `requests` and `httpx` read from two headers)."""
    import httpx
    from ray.serve._private.http_util import RequestIdMiddleware
    from starlette.responses import Response

    from serving.http_answers import one_request_id, v1_predict_response
    from tests.support.serving import request_records

    decl, schema, route, _ = _answering(monkeypatch)

    async def app(scope, receive, send):  # as a champion replica answers POST /v1/models/{name}:predict
        request = Request(scope, receive)
        answer = await answer_prediction(request, decl, schema, decode_v1, route)
        response = answer if isinstance(answer, Response) else one_request_id(v1_predict_response(decl.name, *answer[:2]), request)
        await response(scope, receive, send)

    async def post(body: dict, headers: dict) -> httpx.Response:
        transport = httpx.ASGITransport(app=RequestIdMiddleware(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            return await client.post("/v1/models/flights:predict", json=body, headers=headers)

    records = request_records(1)
    for body, headers in (({"instances": records}, {}), ({"instances": records}, {"X-Request-Id": "h-1"}), ({"instances": []}, {})):
        answer = asyncio.run(post(body, headers))
        ids = answer.headers.get_list("x-request-id")
        assert len(ids) == 1, (answer.status_code, ids)
        assert ids[0] == (answer.json()["request_id"] if answer.status_code == 200 else ids[0]) == headers.get("X-Request-Id", ids[0])
    own = asyncio.run(post({"instances": records, "request_id": "order-9"}, {"X-Request-Id": "h-2"}))
    assert own.json()["request_id"] == "order-9" and "order-9" in own.headers.get_list("x-request-id")


def test_the_bearer_scheme_is_read_in_any_case_and_the_token_exactly(monkeypatch):
    monkeypatch.setenv("TEST_TOKEN", "s3cret")

    def given(value: str | None) -> bool:
        headers = [(b"authorization", value.encode())] if value is not None else []
        return token_ok(Request({"type": "http", "method": "POST", "path": "/", "headers": headers}), "TEST_TOKEN")

    assert [given(v) for v in ("Bearer s3cret", "bearer s3cret", "BEARER  s3cret")] == [True, True, True]  # RFC 7235
    refused = ("Bearer s3cre", "Bearer S3CRET", "Basic s3cret", "s3cret", "Bearers3cret", "Bearer", "", None)
    assert not any(given(v) for v in refused)
    monkeypatch.setenv("TEST_TOKEN", "")
    assert not given("Bearer ")  # no token set: nothing matches (the routes then ask for none)
