"""Request bodies turned into records, or a 4xx naming the problem (serving/requests.py)."""

from __future__ import annotations

import json

import pytest

from mlops_assets.core.feature_contract import load_feature_module
from serving.requests import RequestError, RequestSchema, decode_v2
from tests.support.models import flights_variant
from tests.support.serving import request_records


def test_a_v2_shape_of_booleans_is_refused():
    """`"shape": [true]` was read as `[1]` (a bool is an int to isinstance) and the request answered."""
    decl = flights_variant()
    schema = RequestSchema.of(decl, load_feature_module(decl).input_columns(decl))
    (record,) = request_records(1)
    datatype = {"str": "BYTES", "datetime": "BYTES", "float64": "FP64"}
    inputs = [{"name": c, "shape": [1], "datatype": datatype.get(s.type, "INT64"), "data": [record[c]]} for c, s in schema.columns.items()]
    assert len(decode_v2(json.dumps({"inputs": inputs}).encode(), {}, schema).records) == 1
    inputs[0]["shape"] = [True]
    with pytest.raises(RequestError) as err:
        decode_v2(json.dumps({"inputs": inputs}).encode(), {}, schema)
    assert err.value.status == 400 and "shape must be a list of integers" in err.value.message and err.value.field == "year"
