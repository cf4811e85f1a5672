"""A client's mistake is answered 4xx and logged as one line, never a traceback."""

from __future__ import annotations

import asyncio
import json
import logging

from starlette.requests import Request

from mlops_assets.core.feature_contract import load_feature_module
from serving.http_answers import answer_prediction
from serving.requests import RequestSchema, decode_v1
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
