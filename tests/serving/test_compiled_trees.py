"""Compiled trees (tl2cgen) serve large requests only where they predict exactly what LightGBM predicts.

Real builds with gcc, of small forests: every task's predictions identical to `Booster.predict`, the
library built once per model file, a library of another forest found to differ, and a model server
whose pipeline declares `serving.compiled_trees` switching to them in the background.
"""

from __future__ import annotations

import json
import shutil
import time

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest
import yaml

from serving.compiled_trees import CompileError, compile_forest, library_path
from serving.exact_predictions import identical
from serving.loaded_model import SMALL_BATCH
from tests.support.serving import offline_features, request_records

pytest.importorskip("tl2cgen", reason="compiled trees need the [compiled] extra")
if shutil.which("gcc") is None:
    pytest.skip("compiled trees need a C compiler (gcc)", allow_module_level=True)


def _forest(tmp_path, task: str, seed: int = 4, rounds: int = 12):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(SMALL_BATCH + 300, 4))
    x[rng.random(x.shape) < 0.05] = np.nan  # missing values take each split's default side, in both
    params = {"regression": {"objective": "regression"}, "binary": {"objective": "binary"}}.get(
        task, {"objective": "multiclass", "num_class": 3}
    )
    y = {"regression": x[:, 0] * 2.0, "binary": (np.nan_to_num(x[:, 0]) > 0).astype(int)}.get(
        task, np.digitize(np.nan_to_num(x[:, 0]), [-0.5, 0.5])
    )
    booster = lgb.train({**params, "verbose": -1, "num_leaves": 15}, lgb.Dataset(x, y), rounds)
    path = tmp_path / f"{task}-{seed}-{rounds}.lgb"
    booster.save_model(str(path))
    return x, lgb.Booster(model_file=str(path)), str(path)


@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
def test_compiled_trees_predict_exactly_what_lightgbm_predicts(tmp_path, task):
    x, booster, model_file = _forest(tmp_path, task)
    forest = compile_forest(model_file, str(tmp_path / "cache"), threads=2)
    expected = booster.predict(x)
    assert identical(forest.predict, x, expected, "compiled trees") is None
    np.testing.assert_array_equal(forest.predict(x, expected.shape), expected)


def test_a_library_is_built_once_per_model_file_and_another_forest_is_found_to_differ(tmp_path):
    x, booster, model_file = _forest(tmp_path, "regression")
    cache = str(tmp_path / "cache")
    compile_forest(model_file, cache, threads=1)
    built = library_path(model_file, cache)
    stamp = built.stat().st_mtime_ns
    compile_forest(model_file, cache, threads=1)  # another replica of the same version: the same library, not rebuilt
    assert built.stat().st_mtime_ns == stamp
    _, _, other_file = _forest(tmp_path, "regression", seed=5, rounds=20)
    other = compile_forest(other_file, cache, threads=1)
    why = identical(other.predict, x, booster.predict(x), "compiled trees")
    assert why is not None and "differ from LightGBM" in why
    assert identical(other.predict, x[:0], booster.predict(x[:0]), "compiled trees") == "no rows to check the compiled trees on"


def test_without_tl2cgen_the_error_names_the_extra(tmp_path, monkeypatch):
    _, _, model_file = _forest(tmp_path, "regression")
    monkeypatch.setitem(__import__("sys").modules, "tl2cgen", None)  # as if the extra were not installed
    with pytest.raises(CompileError, match=r"\[compiled\]"):
        compile_forest(model_file, str(tmp_path / "cache"), threads=1)


def _server_declaring_compiled_trees(serving_registry, tmp_path, monkeypatch):
    """The champion's model server, in this process, for a declaration with `serving.compiled_trees`, once its
    background build and check have finished."""
    from resources.serving import ServeSettings
    from serving import deployments
    from serving.deployments import ModelServer

    monkeypatch.setattr(deployments, "COMPILED_TREES_CACHE", str(tmp_path / "cache"))
    decl = serving_registry.decl
    decl = decl.model_copy(update={"serving": decl.serving.model_copy(update={"compiled_trees": True})})
    declared = tmp_path / "flights.yaml"
    declared.write_text(yaml.safe_dump(decl.model_dump(mode="json", by_alias=True)))
    settings = ServeSettings(
        pipeline="flights", tracking_uri=serving_registry.tracking_uri, delta_root=serving_registry.delta.root, pipelines=str(declared)
    )
    server = ModelServer.func_or_class(settings.model_dump(), "champion")
    server.reconfigure({"model_version": serving_registry.champion})
    assert server.decl.serving.compiled_trees
    deadline = time.monotonic() + 120
    while server.loaded.model.compiled_note == "building" and time.monotonic() < deadline:
        time.sleep(0.2)
    return server


def test_a_model_server_declaring_compiled_trees_switches_to_them_once_checked(serving_registry, tmp_path, monkeypatch):
    """LightGBM answers while the library builds; then large requests go through the compiled trees, with the
    same predictions, and small ones stay on LightGBM."""
    from serving.requests import typed_frame

    server = _server_declaring_compiled_trees(serving_registry, tmp_path, monkeypatch)
    try:
        model, status = server.loaded.model, server.status()
        assert status["predictor"] == "tl2cgen" and status["compiled_trees"] is None, status
        distinct = request_records(60)
        booster = serving_registry.boosters[serving_registry.champion]
        features = offline_features(serving_registry, distinct).select(booster.feature_name()).cast(pl.Float64).to_numpy()
        copies = SMALL_BATCH // 60 + 1  # a large request: the same flights several times over
        records, expected = distinct * copies, np.tile(booster.predict(features), copies)
        frame = typed_frame(records, server.schema)
        calls: list[int] = []
        compiled_predict = model.compiled.predict
        model.compiled.predict = lambda x, shape=None: calls.append(x.shape[0]) or compiled_predict(x, shape)
        large = server.predict_many([(frame, "large", 0.0, "champion", True, None)])[0]
        small = server.predict_many([(frame.head(5), "small", 0.0, "champion", True, None)])[0]
        np.testing.assert_array_equal(large["predictions"], expected)
        np.testing.assert_array_equal(small["predictions"], expected[:5])
        assert calls == [len(records)]  # the large request only
    finally:
        server.close()


def test_a_refused_library_leaves_lightgbm_serving_and_says_why(serving_registry, tmp_path, monkeypatch):
    from serving import compiled_trees, exact_predictions

    # the check's verdict on a real build, as if one prediction differed
    monkeypatch.setattr(exact_predictions, "identical", lambda predict, x, expected, what: f"{what} differ from LightGBM on 1 of 5 rows")
    server = _server_declaring_compiled_trees(serving_registry, tmp_path, monkeypatch)
    try:
        model, status = server.loaded.model, server.status()
        assert status["predictor"] == "lightgbm" and "differ from LightGBM" in status["compiled_trees"], status
        assert model.compiled is None
        assert compiled_trees.library_path(model.model_file, str(tmp_path / "cache")).exists()  # built, then refused
        assert json.dumps(status)  # the status stays JSON
    finally:
        server.close()
