"""Lone rows through LightGBM's single-row C API: exactly what `Booster.predict` answers, or not used.

Real LightGBM forests of each task with missing values; a model server in this process that checks the
fast path against `Booster.predict` on the latest features partition after each load, then predicts
one-row requests through it (and every other request, or a refused check, through `Booster.predict`).
"""

from __future__ import annotations

import json
import threading
import time

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from serving.exact_predictions import identical
from serving.single_row import UNCHECKED, SingleRowError, SingleRowPredictor
from tests.support.serving import offline_features, request_records


def _forest(tmp_path, task: str, seed: int = 7):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(600, 5))
    x[rng.random(x.shape) < 0.05] = np.nan  # missing values take each split's default side, in both paths
    params = {"regression": {"objective": "regression"}, "binary": {"objective": "binary"}}.get(
        task, {"objective": "multiclass", "num_class": 3}
    )
    y = {"regression": x[:, 0] * 3.0 + np.nan_to_num(x[:, 1]), "binary": (np.nan_to_num(x[:, 0]) > 0).astype(int)}.get(
        task, np.digitize(np.nan_to_num(x[:, 0]), [-0.5, 0.5])
    )
    booster = lgb.train({**params, "verbose": -1, "num_leaves": 15}, lgb.Dataset(x, y), 25)
    path = tmp_path / f"{task}.lgb"
    booster.save_model(str(path))
    return x, lgb.Booster(model_file=str(path)), str(path)


def _predictor(booster: lgb.Booster, path: str) -> SingleRowPredictor:
    return SingleRowPredictor(path, booster.num_feature(), booster.num_model_per_iteration(), booster.best_iteration)


@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
def test_each_row_alone_is_exactly_what_booster_predict_answers(tmp_path, task):
    x, booster, path = _forest(tmp_path, task)
    predictor, expected = _predictor(booster, path), booster.predict(x, num_threads=1)
    assert identical(predictor.predict_rows, x, expected, "single-row predictions") is None
    np.testing.assert_array_equal(predictor.predict(x[3]), np.atleast_1d(expected[3]))
    np.testing.assert_array_equal(predictor.predict(np.asfortranarray(x)[3]), np.atleast_1d(expected[3]))  # a strided row


def test_another_forest_is_found_to_differ_and_bad_input_is_named(tmp_path):
    x, booster, path = _forest(tmp_path, "regression")
    _, _, other_path = _forest(tmp_path, "binary", seed=3)
    other = SingleRowPredictor(other_path, 5, 1)
    why = identical(other.predict_rows, x, booster.predict(x), "single-row predictions")
    assert why is not None and "differ from LightGBM on" in why
    assert (
        identical(other.predict_rows, x[:0], booster.predict(x[:0]), "single-row predictions")
        == "no rows to check the single-row predictions on"
    )
    with pytest.raises(ValueError, match="one row of 5 features expected, got shape \\(4,\\)"):
        _predictor(booster, path).predict(x[0, :4])
    with pytest.raises(SingleRowError, match="LightGBM loading the model"):
        SingleRowPredictor(str(tmp_path / "missing.lgb"), 5, 1)


def test_a_busy_predictor_hands_the_row_back_and_its_handles_are_freed(tmp_path):
    """One thread at a time: another one gets None (the model then uses Booster.predict), never a wait."""
    x, booster, path = _forest(tmp_path, "regression")
    predictor = _predictor(booster, path)
    with predictor._lock:  # another thread is predicting
        assert predictor.predict(x[0]) is None
    finalizer = predictor._handles
    del predictor
    assert not finalizer.alive  # LightGBM's booster and fast configuration freed with the object


def _checked_server(champion_server, serving_registry):
    champion_server.reconfigure({"model_version": serving_registry.champion})
    deadline = time.monotonic() + 60
    while champion_server.loaded.model.single_row_note == UNCHECKED and time.monotonic() < deadline:
        time.sleep(0.05)
    return champion_server


def test_a_model_server_predicts_lone_rows_through_it_once_checked(champion_server, serving_registry):
    from serving.requests import RequestSchema, typed_frame

    server = _checked_server(champion_server, serving_registry)
    model, status = server.loaded.model, server.status()
    assert status["single_row"] is None and model.single_row is not None, status
    assert json.dumps(status)
    booster = serving_registry.boosters[serving_registry.champion]
    records = request_records(8)
    expected = booster.predict(offline_features(serving_registry, records).select(booster.feature_name()).cast(pl.Float64).to_numpy())
    fast_calls: list[int] = []
    fast_predict = model.single_row.predict
    model.single_row.predict = lambda row: fast_calls.append(1) or fast_predict(row)
    schema = RequestSchema.of(serving_registry.decl, server.module.input_columns(serving_registry.decl))
    for i, record in enumerate(records):  # lone rows: through the C API, each exactly Booster.predict's
        answer = server.predict(typed_frame([record], schema), f"lone-{i}", 0.0, "champion", True)
        assert answer["predictions"] == [expected[i]]
    assert len(fast_calls) == len(records)
    several = server.predict(typed_frame(records, schema), "several", 0.0, "champion", True)  # Booster.predict
    np.testing.assert_array_equal(several["predictions"], expected)
    assert len(fast_calls) == len(records)


def test_concurrent_lone_rows_from_six_threads_are_each_exact(champion_server, serving_registry):
    from serving.requests import RequestSchema, typed_frame

    server = _checked_server(champion_server, serving_registry)
    booster = serving_registry.boosters[serving_registry.champion]
    records = request_records(6)
    expected = booster.predict(offline_features(serving_registry, records).select(booster.feature_name()).cast(pl.Float64).to_numpy())
    schema = RequestSchema.of(serving_registry.decl, server.module.input_columns(serving_registry.decl))
    frames = [typed_frame([r], schema) for r in records]
    wrong: list = []

    def hammer(i: int) -> None:
        for _ in range(150):
            got = server.predict(frames[i], f"t{i}", 0.0, "champion", True)["predictions"]
            if got != [expected[i]]:
                wrong.append((i, got))

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(len(records))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


def test_a_refused_check_leaves_booster_predict_serving_and_says_why(champion_server, serving_registry, monkeypatch):
    from serving import exact_predictions

    monkeypatch.setattr(exact_predictions, "identical", lambda predict, x, expected, what: f"{what} differ from LightGBM on 1 of 5 rows")
    server = _checked_server(champion_server, serving_registry)
    assert server.loaded.model.single_row is None
    assert server.status()["single_row"] == "single-row predictions differ from LightGBM on 1 of 5 rows"


def test_a_predictor_that_fails_while_serving_is_retired_and_the_request_still_answered(champion_server, serving_registry):
    """A LightGBM library error on a lone row (the edge stubbed here) costs no request: Booster.predict answers
    it and every later one of the version, and the status says why the fast path stopped."""
    from serving.requests import RequestSchema, typed_frame

    server = _checked_server(champion_server, serving_registry)
    model = server.loaded.model
    calls: list[int] = []

    class Failing:
        def predict(self, row):
            calls.append(1)
            raise SingleRowError("LightGBM predicting a row: out of memory")

    model.single_row = Failing()
    booster = serving_registry.boosters[serving_registry.champion]
    records = request_records(3)
    expected = booster.predict(offline_features(serving_registry, records).select(booster.feature_name()).cast(pl.Float64).to_numpy())
    schema = RequestSchema.of(serving_registry.decl, server.module.input_columns(serving_registry.decl))
    for i, record in enumerate(records):
        answer = server.predict(typed_frame([record], schema), f"after-failure-{i}", 0.0, "champion", True)
        assert answer["predictions"] == [expected[i]]
    assert calls == [1]  # retired at its first failure
    assert model.single_row is None
    assert server.status()["single_row"] == "failed while serving: SingleRowError: LightGBM predicting a row: out of memory"
