"""Triton's binary tensor extension: `tritonclient.http` with its defaults against the served endpoint.

tritonclient sends inputs as binary data after a JSON header (`Inference-Header-Content-Length`)
and, when no outputs are named, asks for every output in binary. The answers must be the
same predictions the JSON paths give; a malformed binary body is a 400 naming the problem.
"""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from mlops_assets.core.feature_contract import load_feature_module
from serving.requests import RequestError, RequestSchema, decode_v2
from tests.support.models import flights_variant
from tests.support.ray_instance import PREDICT_TOKEN
from tests.support.serving import request_records

AUTH = {"Authorization": f"Bearer {PREDICT_TOKEN}"}


def auth() -> dict:
    """A fresh header dict per call: tritonclient adds its own headers to the dict it is given."""
    return dict(AUTH)


def complete_records(n: int) -> list[dict]:
    """Records without missing values (a BYTES tensor has no null)."""
    return [r for r in request_records(4 * n) if all(v is not None for v in r.values())][:n]


def triton_inputs(records: list[dict], binary: bool = True, float_type: str = "FP64") -> list:
    inputs = []
    for column in records[0]:
        values = [r[column] for r in records]
        if isinstance(values[0], str):
            array, datatype = np.array([v.encode() for v in values], dtype=np.object_), "BYTES"
        elif isinstance(values[0], float):
            array, datatype = np.array(values, dtype=np.float64 if float_type == "FP64" else np.float32), float_type
        else:
            array, datatype = np.array(values, dtype=np.int64), "INT64"
        tensor = triton.InferInput(column, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


@pytest.fixture(scope="module")
def schema() -> RequestSchema:
    decl = flights_variant()
    return RequestSchema.of(decl, load_feature_module(decl).input_columns(decl))


def encoded(inputs, outputs=None) -> tuple[bytes, dict]:
    body, json_size = triton.InferenceServerClient.generate_request_body(inputs, outputs=outputs)
    return body, {} if json_size is None else {"inference-header-content-length": str(json_size)}


def test_binary_inputs_decode_to_the_records_json_sends(schema):
    records = complete_records(5)
    body, headers = encoded(triton_inputs(records))
    assert headers, "tritonclient sent binary tensors"
    decoded = decode_v2(body, headers, schema)
    assert decoded.records.records() == records
    assert decoded.outputs == tuple((name, True) for name in schema.outputs), "no outputs named: all, in binary"

    as_json, no_header = encoded(triton_inputs(records, binary=False), [triton.InferRequestedOutput("predictions", binary_data=False)])
    assert not no_header
    json_decoded = decode_v2(as_json, no_header, schema)
    assert json_decoded.records.records() == records and json_decoded.outputs == (("predictions", False),)

    fp32 = decode_v2(*encoded(triton_inputs(records, float_type="FP32")), schema)
    assert fp32.records.data["dep_delay"] == [float(np.float32(r["dep_delay"])) for r in records]


def _refused(schema, body: bytes, headers: dict) -> str:
    with pytest.raises(RequestError) as err:
        decode_v2(body, headers, schema)
    assert err.value.status == 400
    return err.value.message


def test_malformed_binary_bodies_are_400_naming_the_problem(schema):
    records = complete_records(2)
    body, headers = encoded(triton_inputs(records))
    size = int(headers["inference-header-content-length"])
    header = json.loads(body[:size])

    assert "must be a byte count" in _refused(schema, body, {"inference-header-content-length": "ten"})
    assert "must be a byte count" in _refused(schema, body, {"inference-header-content-length": "\u00b2"})  # isdigit(), not int()
    assert "but the body has only" in _refused(schema, body, {"inference-header-content-length": str(len(body) + 1)})
    assert "goes past the end of the body" in _refused(schema, body[:-3], headers)
    # a length that lies, inside the body: the JSON header is cut short or runs into the binary data; the answer
    # said only "request body is not valid JSON", which a client whose JSON is valid cannot act on
    for wrong in (size - 5, size + 5, 0):
        message = _refused(schema, body, {"inference-header-content-length": str(wrong)})
        assert message.startswith(f"the first {wrong} bytes (Inference-Header-Content-Length) are not the JSON request header")
    assert "bytes after the binary inputs" in _refused(schema, body + b"\0\0", headers)

    both = dict(header, inputs=[dict(header["inputs"][0], data=[2013, 2013])] + header["inputs"][1:])
    text = json.dumps(both).encode()
    assert "has both data and binary_data_size" in _refused(schema, text + body[size:], {"inference-header-content-length": str(len(text))})

    # FP64 bytes that are not whole values; a BYTES element that is not UTF-8
    one = {"inputs": [{"name": "dep_delay", "shape": [1], "datatype": "FP64", "parameters": {"binary_data_size": 5}}]}
    text = json.dumps(one).encode()
    assert "not a whole number of FP64 values" in _refused(schema, text + b"12345", {"inference-header-content-length": str(len(text))})
    bad_text = {"inputs": [{"name": "carrier", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}]}
    text = json.dumps(bad_text).encode()
    message = _refused(schema, text + struct.pack("<I", 2) + b"\xff\xfe", {"inference-header-content-length": str(len(text))})
    assert "BYTES element 0 is not UTF-8 text" in message

    asked = dict(header, outputs=[{"name": "nope"}])
    text = json.dumps(asked).encode()
    assert "unknown output 'nope'; outputs: predictions" in _refused(
        schema, text + body[size:], {"inference-header-content-length": str(len(text))}
    )


def test_tritonclient_with_its_defaults_gets_the_json_paths_predictions(served, serving_registry):
    client = triton.InferenceServerClient(url=served.base_url.removeprefix("http://"))
    try:
        records = complete_records(12)
        assert client.is_server_live(headers=auth()) and client.is_model_ready("flights", headers=auth())
        result = client.infer("flights", triton_inputs(records), headers=auth())  # binary in, binary out
        predictions = result.as_numpy("predictions")
        assert predictions.dtype == np.float64 and predictions.shape == (12,)
        v1 = requests.post(f"{served.base_url}/v1/models/flights:predict", json={"instances": records}, headers=auth(), timeout=30).json()
        assert predictions.tolist() == v1["predictions"], "binary and JSON answers differ"
        assert result.get_response()["model_version"] == str(serving_registry.champion)

        # one output asked for as JSON; the version-pinned route takes the extension too
        pinned = client.infer(
            "flights",
            triton_inputs(records),
            model_version=str(serving_registry.champion),
            outputs=[triton.InferRequestedOutput("predictions", binary_data=False)],
            headers=auth(),
        )
        assert pinned.as_numpy("predictions").tolist() == v1["predictions"]
        assert "data" in pinned.get_response()["outputs"][0]

        # a compressed request body, as tritonclient sends it with request_compression_algorithm
        squeezed = client.infer("flights", triton_inputs(records), headers=auth(), request_compression_algorithm="gzip")
        assert squeezed.as_numpy("predictions").tolist() == v1["predictions"]

        unknown = triton.InferInput("nope", [1], "INT64")
        unknown.set_data_from_numpy(np.array([1], dtype=np.int64))
        with pytest.raises(InferenceServerException, match="unknown input 'nope'"):
            client.infer("flights", [unknown], headers=auth())
    finally:
        client.close()


def test_bad_binary_requests_over_http_are_4xx(served):
    url = f"{served.base_url}/v2/models/flights/infer"
    body, headers = encoded(triton_inputs(complete_records(3)))
    r = requests.post(url, data=body[:-1], headers={**AUTH, **headers}, timeout=30)
    assert r.status_code == 400 and "goes past the end of the body" in r.json()["error"]
    r = requests.post(url, data=gzip.compress(body)[:-4], headers={**AUTH, **headers, "Content-Encoding": "gzip"}, timeout=30)
    assert r.status_code == 400 and "not valid gzip data" in r.json()["error"]
    r = requests.post(url, data=body, headers={**AUTH, **headers, "Content-Encoding": "br"}, timeout=30)
    assert r.status_code == 415
