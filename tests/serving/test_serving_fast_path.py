"""The request fast paths give exactly what the full paths give (in-process, no Ray).

- `fast_typed_frame` types plainly valid records without `conform`/`validate`; it must build
  the identical frame, and hand everything else to the full path (same errors as before).
- `ModelServer.predict_many` featurizes and predicts concurrent requests as one frame
  (`@serve.batch`); every request must get exactly LightGBM's predictions for its own
  records and its own rows in the prediction log.
"""

from __future__ import annotations

import math
from datetime import UTC

import numpy as np
import polars as pl
import pytest

from mlops_assets.core.feature_contract import load_feature_module
from mlops_assets.core.lookups import FEW_ROWS
from resources.serving import ServeSettings
from serving.deployments import ModelServer, NotReady, VersionNotHere
from serving.requests import (
    LONG_COLUMN,
    PLAIN_UTC,
    Columns,
    RequestError,
    RequestSchema,
    _plain_utc_column,
    checked_frame,
    fast_typed_frame,
    typed_frame,
)
from tests.support.serving import (
    offline_features,
    request_records,
)

Server = ModelServer.func_or_class


@pytest.fixture
def schema(serving_registry) -> RequestSchema:
    decl = serving_registry.decl
    return RequestSchema.of(decl, load_feature_module(decl).input_columns(decl))


def test_fast_frame_is_the_checked_frame(schema):
    records = request_records(300)
    records[3] = {**records[3], "dep_delay": None, "tailnum": None}  # nullable columns
    records[4] = {**records[4], "dep_delay": 12, "distance": 719}  # an int in a float column
    records[5] = {**records[5], "dep_delay": -0.0}
    assert len(records) > LONG_COLUMN  # long columns: checked by polars
    fast = fast_typed_frame(records, schema)
    assert fast is not None
    full = checked_frame(records, schema)
    assert fast.schema == full.schema
    assert fast.equals(full)
    columns = Columns({c: [r[c] for r in records] for c in records[0]}, len(records))  # V2's columns, the same frame
    assert fast_typed_frame(columns, schema).equals(full)
    assert typed_frame(records[:1], schema).equals(checked_frame(records[:1], schema))


@pytest.mark.parametrize(
    "change",
    [
        {"year": "2013"},  # text the full path may read
        {"year": 2013.0},
        {"month": True},
        {"month": 13},  # above the declared maximum
        {"sched_dep_time": 2**40},
        {"dep_delay": math.nan},
        {"dep_delay": math.inf},
        {"dep_delay": 5000.0},
        {"carrier": "XX"},  # unknown category
        {"carrier": None},  # null in a required column
        {"distance": 1.5},
        {"time_hour": "not a time"},
        {"time_hour": 5},
        {"extra": 1},  # unknown field
    ],
)
@pytest.mark.parametrize("rows", [1, LONG_COLUMN + 36], ids=["alone", "in-a-long-request"])
def test_anything_not_plainly_valid_takes_the_full_path(schema, change, rows):
    """Alone, each value is checked by Python; among many (a long column), by one pass over the types and polars."""
    records = request_records(rows)
    records[rows // 2] = {**records[rows // 2], **change}
    assert fast_typed_frame(records, schema) is None
    try:
        expected = checked_frame(records, schema)
    except RequestError as err:
        with pytest.raises(RequestError) as raised:
            typed_frame(records, schema)
        assert (raised.value.message, raised.value.status, raised.value.field) == (err.message, err.status, err.field)
    else:
        assert typed_frame(records, schema).equals(expected)


@pytest.mark.parametrize(
    "text",
    ["2013-02-05T11:00:00Z", "2013-02-05 11:00:00", "2013-02-05T11:00:00+00:00", "2013-12-31T23:59:59Z", "2016-02-29T00:00:00Z"],
)
def test_plain_utc_timestamps_read_by_python_equal_the_polars_cast(schema, text):
    assert PLAIN_UTC.fullmatch(text)  # three records: read by Python, not by polars' cast
    records = [{**r, "time_hour": text} for r in request_records(3)]
    fast = fast_typed_frame(records, schema)
    assert fast is not None and fast.equals(checked_frame(records, schema))
    assert fast_typed_frame(records * 10, schema).equals(checked_frame(records * 10, schema))  # polars' own cast


@pytest.mark.parametrize(
    "odd",
    [
        "2013-2-05T11:00:00Z",  # unpadded
        "2013-02-05T11:00:00.5Z",  # a fraction
        "2013-02-05T11:00Z",
        " 2013-02-05T11:00:00Z",  # spaces `conform` strips
        "2013-02-05T11:00:00-05:00",  # another offset
        "2013-02-05 11:00:00",  # another plain form than the first value's
        "2013-02-30T11:00:00Z",  # impossible
        "2013-02-05",
    ],
)
def test_many_timestamps_read_in_one_plain_form_equal_polars_inference(schema, odd):
    """A long request's timestamps are read with the first one's plain form only when every value formats back to
    its own text; one odd value sends the column to polars' inference, which gives what the full path gives."""
    records = [{**r, "time_hour": r["time_hour"].replace("+00:00", "Z")} for r in request_records(40)]
    assert all(PLAIN_UTC.fullmatch(r["time_hour"]) for r in records)
    plain = fast_typed_frame(records, schema)
    assert plain is not None and plain.equals(checked_frame(records, schema))
    texts = [r["time_hour"] for r in records]
    assert _plain_utc_column(pl.Series(texts), texts) is not None  # read in the plain form
    records[17] = {**records[17], "time_hour": odd}
    texts = [r["time_hour"] for r in records]
    assert _plain_utc_column(pl.Series(texts), texts) is None  # sent on to polars' inference
    try:
        expected = checked_frame(records, schema)
    except RequestError as err:
        with pytest.raises(RequestError) as raised:
            typed_frame(records, schema)
        assert (raised.value.message, raised.value.field) == (err.message, err.field)
    else:
        assert typed_frame(records, schema).equals(expected)


@pytest.mark.parametrize("text", ["2013-13-05T11:00:00Z", "2013-02-30T11:00:00Z", "2013-02-05T25:00:00Z"])
def test_an_impossible_plain_timestamp_takes_the_full_path(schema, text):
    record = {**request_records(1)[0], "time_hour": text}
    assert fast_typed_frame([record], schema) is None
    with pytest.raises(RequestError, match="time_hour"):
        typed_frame([record], schema)


def test_v2_columns_are_typed_exactly_as_the_same_records(schema):
    """V2 hands its tensors over as columns: the same frame, or the same error naming record and field."""
    records = request_records(50)
    records[7] = {**records[7], "dep_delay": None}
    columns = Columns({c: [r[c] for r in records] for c in schema.columns}, len(records))
    assert columns.records() == records
    assert typed_frame(columns, schema).equals(typed_frame(records, schema))
    bad = [*records[:3], {**records[3], "carrier": "XX"}]
    bad_columns = Columns({c: [r[c] for r in bad] for c in schema.columns}, len(bad))
    with pytest.raises(RequestError) as from_records:
        typed_frame(bad, schema)
    with pytest.raises(RequestError) as from_columns:
        typed_frame(bad_columns, schema)
    assert from_columns.value.message == from_records.value.message and "record 3" in from_columns.value.message


def test_missing_field_takes_the_full_path(schema):
    record = request_records(1)[0]
    del record["dest"]
    assert fast_typed_frame([record], schema) is None
    with pytest.raises(RequestError, match="record 0: missing field"):
        typed_frame([record], schema)


@pytest.fixture
def server(champion_server):
    return champion_server


def test_batched_requests_get_lightgbms_predictions_each(server, serving_registry, schema):
    server.reconfigure({"model_version": None})
    records = request_records(30)
    booster = serving_registry.boosters[serving_registry.champion]
    features = offline_features(serving_registry, records)
    expected = booster.predict(features.select(booster.feature_name()).cast(pl.Float64).to_numpy())
    cuts = [(0, 1), (1, 6), (6, 18), (18, 30)]
    ids = [f"batched-r{k}" for k in range(len(cuts))]  # the shared log holds other tests' requests too
    items = [(typed_frame(records[a:b], schema), ids[k], 0.0, "champion", True, None) for k, (a, b) in enumerate(cuts)]
    items.insert(2, (typed_frame(records[:2], schema), "pinned", 0.0, "champion", True, 999))
    answers = server.predict_many(items)
    assert isinstance(answers[2], VersionNotHere)
    got = [a for k, a in enumerate(answers) if k != 2]
    for (a, b), answer in zip(cuts, got):
        assert answer["model_version"] == serving_registry.champion
        np.testing.assert_array_equal(np.asarray(answer["predictions"]), expected[a:b])
        # the same as one request alone
        alone = server.predict(typed_frame(records[a:b], schema), "x", 0.0, "champion", True)
        assert alone["predictions"] == answer["predictions"]
    server.flush_log()
    logged = serving_registry.delta.scan("flights", "prediction_log").collect()  # type: ignore[union-attr]
    mine = logged.filter(pl.col("request_id").is_in(ids)).sort("request_id", "record")
    assert mine.group_by("request_id").len().sort("request_id").get_column("len").to_list() == [1, 5, 12, 12]
    assert mine.filter(pl.col("request_id") == ids[2]).get_column("record").to_list() == list(range(12))
    np.testing.assert_array_equal(mine.sort("request_id", "record").get_column("prediction").to_numpy(), expected)
    assert "pinned" not in logged.get_column("request_id").to_list()


class _PoisonedFeatures:
    """The champion's feature module, failing any frame that holds `dep_delay == 1999` (a user's feature code
    raising on one request's values)."""

    def __init__(self, inner):
        self.inner = inner

    def build(self, frame, reference, index=None):
        if (frame.get_column("dep_delay") == 1999).any():
            raise ValueError("poisoned dep_delay")
        return self.inner.build(frame, reference, index)


def test_one_requests_failure_fails_only_that_request_of_its_batch(server, serving_registry, schema, monkeypatch):
    """A batch whose feature build fails is answered one request at a time: its batch-mates get their predictions
    (they used to share the failure), and only the failing request is logged as failed."""
    server.reconfigure({"model_version": None})
    records = request_records(6)
    poisoned = [{**r, "dep_delay": 1999} for r in records[2:4]]
    ids = ["poison-batch-a", "poison-batch-bad", "poison-batch-b"]
    items = [(typed_frame(rs, schema), i, 0.0, "champion", True, None) for rs, i in zip([records[:2], poisoned, records[4:]], ids)]
    monkeypatch.setattr(server, "module", _PoisonedFeatures(server.module))
    answers = server.predict_many(items)
    assert isinstance(answers[1], ValueError) and "poisoned" in str(answers[1])
    booster = serving_registry.boosters[serving_registry.champion]
    expected = booster.predict(offline_features(serving_registry, records).select(booster.feature_name()).cast(pl.Float64).to_numpy())
    np.testing.assert_array_equal(np.asarray(answers[0]["predictions"]), expected[:2])
    np.testing.assert_array_equal(np.asarray(answers[2]["predictions"]), expected[4:])
    server.flush_log()
    logged = serving_registry.delta.scan("flights", "prediction_log").filter(pl.col("request_id").is_in(ids)).collect()  # type: ignore[union-attr]
    failed = logged.filter(pl.col("error").is_not_null())
    assert failed.get_column("request_id").to_list() == [ids[1]] and "poisoned" in failed.get_column("error")[0]
    assert sorted(logged.filter(pl.col("served")).get_column("request_id").to_list()) == sorted([ids[0]] * 2 + [ids[2]] * 2)


def test_batch_without_a_model_is_not_ready(serving_registry, schema, tmp_path):
    empty = ServeSettings(pipeline="flights", tracking_uri=f"sqlite:///{tmp_path / 'empty.db'}", delta_root=serving_registry.delta.root)
    s = Server(empty.model_dump(), "champion")
    try:
        s.reconfigure({"model_version": None})
        answers = s.predict_many([(typed_frame(request_records(1), schema), "r", 0.0, "champion", True, None)])
        assert isinstance(answers[0], NotReady)
    finally:
        s.close()


def test_log_rows_columns_and_values():
    from datetime import datetime

    from serving.prediction_log import log_rows

    features = pl.DataFrame({"f": [1.0, 2.0, 3.0]})
    multiclass = {"predictions": ["a", "b", "a"], "labels": ["a", "b", "a"], "probabilities": [[0.7, 0.3], [0.4, 0.6], [0.9, 0.1]]}
    rows = log_rows(
        features=features, result=multiclass, pipeline="p", model_version=3, role="canary", served=False, request_id="r", received_at=0.0
    )
    assert rows.schema == pl.Schema(
        {
            "request_id": pl.String,
            "record": pl.Int32,
            "logged_at": pl.Datetime("us", "UTC"),
            "pipeline": pl.String,
            "model_version": pl.Int64,
            "role": pl.String,
            "served": pl.Boolean,
            "latency_ms": pl.Float64,
            "prediction": pl.Float64,
            "label": pl.String,
            "f": pl.Float64,
        }
    )
    assert rows.drop("logged_at", "latency_ms").rows() == [
        ("r", 0, "p", 3, "canary", False, 0.7, "a", 1.0),
        ("r", 1, "p", 3, "canary", False, 0.6, "b", 2.0),
        ("r", 2, "p", 3, "canary", False, 0.9, "a", 3.0),
    ]
    assert rows["logged_at"].n_unique() == 1 and rows["logged_at"][0] <= datetime.now(UTC)
    regression = log_rows(
        features=features,
        result={"predictions": [1.5, -2.0, 0.0]},
        pipeline="p",
        model_version=1,
        role="champion",
        served=True,
        request_id="q",
        received_at=0.0,
    )
    assert regression["prediction"].to_list() == [1.5, -2.0, 0.0] and regression["label"].null_count() == 3


def test_a_batchs_requests_stack_as_concat_stacks_them_and_mismatched_ones_refuse(schema):
    from polars.testing import assert_frame_equal

    from serving.requests import CheckedRows, request_frame, typed_request

    requests = [request_records(k + 1)[k:] for k in range(5)]  # one row each, then more
    requests += [request_records(FEW_ROWS + 3), request_records(2)]
    typed = [typed_request(r, schema) for r in requests]
    # a few plainly valid records stay rows until their batch is one frame; a larger request is a frame at once
    assert [type(t).__name__ for t in typed] == ["CheckedRows"] * 5 + ["DataFrame", "CheckedRows"]
    frames = [typed_frame(r, schema) for r in requests]
    stacked = request_frame(typed, schema)
    assert stacked.n_chunks() == 1
    assert_frame_equal(stacked, pl.concat(frames, how="vertical"))
    assert_frame_equal(request_frame(typed[:5], schema), typed_frame([r for req in requests[:5] for r in req], schema))
    assert request_frame([typed[5]], schema) is typed[5]  # a lone frame is answered as it is
    assert len(typed[6]) == 2 and isinstance(typed[6], CheckedRows)
    with pytest.raises(pl.exceptions.PolarsError):  # predict_many then answers them one at a time
        request_frame([frames[0], frames[1].with_columns(pl.col("dep_delay").cast(pl.String))], schema)
