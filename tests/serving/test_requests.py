"""Request bodies turned into records, or a 4xx naming the problem (serving/requests.py)."""

from __future__ import annotations

import json

import pytest

from mlops_assets.core.feature_contract import load_feature_module
from serving.requests import RequestError, RequestSchema, decode_v1, decode_v2, typed_frame, typed_request
from tests.support.models import flights_variant
from tests.support.serving import request_records

DECL = flights_variant()
SCHEMA = RequestSchema.of(DECL, load_feature_module(DECL).input_columns(DECL))
DATATYPES = {"str": "BYTES", "datetime": "BYTES", "float64": "FP64"}


def v2_inputs(record: dict) -> list[dict]:
    """One record as V2 JSON tensors of one element each."""
    return [{"name": c, "shape": [1], "datatype": DATATYPES.get(s.type, "INT64"), "data": [record[c]]} for c, s in SCHEMA.columns.items()]


def test_a_v2_shape_of_booleans_is_refused():
    """`"shape": [true]` was read as `[1]` (a bool is an int to isinstance) and the request answered."""
    inputs = v2_inputs(request_records(1)[0])
    assert len(decode_v2(json.dumps({"inputs": inputs}).encode(), {}, SCHEMA).records) == 1
    inputs[0]["shape"] = [True]
    with pytest.raises(RequestError) as err:
        decode_v2(json.dumps({"inputs": inputs}).encode(), {}, SCHEMA)
    assert err.value.status == 400 and "shape must be a list of integers" in err.value.message and err.value.field == "year"


def test_a_body_id_that_is_no_string_is_refused():
    """A V2 `"id": 5` (the protocol's id is a string) was ignored and a generated id answered in its place."""
    records = request_records(1)
    assert decode_v1(json.dumps({"instances": records, "request_id": None}).encode(), {}, SCHEMA).request_id is None
    assert decode_v1(json.dumps({"instances": records, "request_id": "order-9"}).encode(), {}, SCHEMA).request_id == "order-9"
    for decode, key, body in ((decode_v1, "request_id", {"instances": records}), (decode_v2, "id", {"inputs": v2_inputs(records[0])})):
        with pytest.raises(RequestError) as err:
            decode(json.dumps({**body, key: 5}).encode(), {}, SCHEMA)
        assert err.value.status == 400 and err.value.message == f"{key} must be a string, got int" and err.value.field == key


@pytest.mark.parametrize("n", [1, 3, 40])  # a lone record (checked in Python), a few, and a frame
def test_a_record_whose_year_month_day_make_no_date_is_a_422(n):
    """2013-02-31 passes each part's declared range; featurizing it failed in the replica, a 500 for the client's
    mistake (and a failure a rollout's error-rate guard counted against the version). Ingestion quarantines it."""
    records = request_records(n)
    assert len(typed_request([{**r, "month": 1, "day": 31} for r in records], SCHEMA)) == n  # a day that exists
    assert len(typed_frame([{**records[0], "year": 2012, "month": 2, "day": 29}], SCHEMA)) == 1  # a leap day
    bad = records[:-1] + [{**records[-1], "month": 2, "day": 31}]
    for typed in (typed_request, typed_frame):
        with pytest.raises(RequestError) as err:
            typed(bad, SCHEMA)
        assert err.value.status == 422 and err.value.field == "day"
        assert err.value.message == f"record {n - 1}: year/month/day 2013-02-31 is no date"
    for month, day in ((2, 29), (4, 31)):  # not a leap year; a 30-day month
        with pytest.raises(RequestError, match=f"2013-{month:02d}-{day} is no date"):
            typed_frame(records[:-1] + [{**records[-1], "month": month, "day": day}], SCHEMA)
