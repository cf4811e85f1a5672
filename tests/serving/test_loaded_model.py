"""Loading registered versions per the registry contract: every task's output, and refusals with reasons."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from resources.registered_models import ModelSource, model_source, resolve_alias
from serving.loaded_model import ModelLoadError, load_source, load_version


@pytest.fixture
def registry(tmp_path):
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    exp = mlflow.create_experiment("reg", artifact_location=(tmp_path / "artifacts").as_uri())
    client = MlflowClient(uri, uri)

    def register(booster: lgb.Booster, name: str, tags: dict) -> int:
        with mlflow.start_run(experiment_id=exp):
            info = mlflow.lightgbm.log_model(booster, name="model", registered_model_name=name)
        for k, v in tags.items():
            client.set_model_version_tag(name, info.registered_model_version, k, v)
        return int(info.registered_model_version)

    return uri, register


def _data(task: str):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, 3))
    if task == "binary":
        return x, (x[:, 0] > 0).astype(int), {"objective": "binary"}
    return x, np.digitize(x[:, 0], [-0.5, 0.5]), {"objective": "multiclass", "num_class": 3}


@pytest.mark.parametrize("task,classes", [("binary", ["on_time", "late"]), ("multiclass", ["early", "on_time", "late"])])
def test_classifiers_answer_with_labels_and_probabilities(registry, task, classes, tmp_path):
    uri, register = registry
    x, y, params = _data(task)
    booster = lgb.train({**params, "verbose": -1}, lgb.Dataset(x, y, feature_name=["a", "b", "c"]), 10)
    tags = {"mlops.feature_columns": json.dumps(["a", "b", "c"]), "mlops.task": task, "mlops.classes": json.dumps(classes)}
    version = register(booster, task, tags)
    model = load_version(uri, task, version, cache_dir=str(tmp_path))
    frame = pl.DataFrame(x[:50], schema=["a", "b", "c"], orient="row")
    out = model.predict(frame)
    raw = booster.predict(x[:50])
    if task == "binary":
        np.testing.assert_allclose(out["predictions"], raw, rtol=0, atol=1e-12)  # probability of classes[1]
        assert out["labels"] == [classes[int(p > 0.5)] for p in raw]
    else:
        np.testing.assert_allclose(out["probabilities"], raw, rtol=0, atol=1e-12)
        assert out["predictions"] == out["labels"] == [classes[i] for i in raw.argmax(axis=1)]


def test_refusals_name_the_problem(registry, tmp_path):
    uri, register = registry
    cache = tmp_path / "downloads"
    cache.mkdir()
    x, y, params = _data("binary")
    booster = lgb.train({**params, "verbose": -1}, lgb.Dataset(x, y, feature_name=["a", "b", "c"]), 3)
    wrong_cols = register(booster, "m", {"mlops.feature_columns": json.dumps(["a", "c", "b"])})
    no_classes = register(booster, "m", {"mlops.task": "binary"})
    bad_task = register(booster, "m", {"mlops.task": "ranking"})
    with pytest.raises(ModelLoadError, match="differs from the booster's features"):
        load_version(uri, "m", wrong_cols, cache_dir=str(cache))
    with pytest.raises(ModelLoadError, match="needs the mlops.classes tag"):
        load_version(uri, "m", no_classes, cache_dir=str(cache))
    with pytest.raises(ModelLoadError, match="mlops.task is 'ranking'"):
        load_version(uri, "m", bad_task, cache_dir=str(cache))
    with pytest.raises(ModelLoadError, match="has no version 99"):
        load_version(uri, "m", 99, cache_dir=str(cache))
    assert list(cache.iterdir()) == []  # a refused version leaves no download behind
    assert resolve_alias(uri, "m", "champion") is None and resolve_alias(uri, "nosuch", "champion") is None
    unreadable = tmp_path / "not-a-registry.db"
    unreadable.write_text("not a database")
    with pytest.raises(Exception, match="file is not a database"):  # a registry that cannot answer is not "no alias"
        resolve_alias(f"sqlite:///{unreadable}", "m", "champion")
    frame = pl.DataFrame({"a": [0.1], "b": [0.2]})
    model = load_version(uri, "m", register(booster, "m", {}), cache_dir=str(cache))  # no tags: a regression over the booster's own columns
    with pytest.raises(ModelLoadError, match=r"needs features .*\['c'\]"):
        model.predict(frame)


def test_a_large_request_predicts_on_the_declared_threads_whatever_openmp_says(registry, tmp_path, monkeypatch):
    """Ray sets a half-CPU replica's OMP_NUM_THREADS to 1; a request of SMALL_BATCH rows or more takes the group's
    `batch_threads` (0: every usable core), a smaller one a single thread; the predictions are LightGBM's own."""
    from serving.loaded_model import SMALL_BATCH, usable_cores

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    uri, register = registry
    rng = np.random.default_rng(5)
    x = rng.normal(size=(SMALL_BATCH + 200, 3))
    booster = lgb.train({"objective": "regression", "verbose": -1}, lgb.Dataset(x, x[:, 0] * 2.0, feature_name=["a", "b", "c"]), 20)
    model = load_version(
        uri, "threads", register(booster, "threads", {"mlops.feature_columns": json.dumps(["a", "b", "c"])}), cache_dir=str(tmp_path)
    )
    asked: list[int] = []

    class Recorded:  # the real booster, with the thread count each call asked for noted
        def predict(self, data, num_threads):
            asked.append(num_threads)
            return model_booster.predict(data, num_threads=num_threads)

    model_booster, model.booster = model.booster, Recorded()
    big, small = pl.DataFrame(x, schema=["a", "b", "c"], orient="row"), pl.DataFrame(x[:10], schema=["a", "b", "c"], orient="row")
    np.testing.assert_array_equal(model.predict(big)["predictions"], booster.predict(x))
    model.predict(small)
    model.batch_threads = 3
    model.predict(big)
    assert asked == [usable_cores(), 1, 3]


def test_a_handed_source_in_a_local_store_loads_without_mlflow(registry, tmp_path):
    """What a deployment hands a replica (`model_source`) is enough to load the version: no MLflow client, no
    MLflow import (about half of a model server's first load), the same predictions; the model file is the replica's own copy."""
    uri, register = registry
    x, y, params = _data("binary")
    booster = lgb.train({**params, "verbose": -1}, lgb.Dataset(x, y, feature_name=["a", "b", "c"]), 10)
    tags = {"mlops.feature_columns": json.dumps(["a", "b", "c"]), "mlops.task": "binary", "mlops.classes": json.dumps(["no", "yes"])}
    version = register(booster, "handed", {**tags, "mlops.status": "candidate"})
    source = model_source(uri, "handed", version)
    assert source.artifact_uri.startswith("file:") and source.tags == tags and source.run_id  # serving's tags only
    child = textwrap.dedent(
        """
        import json, sys
        from resources.registered_models import ModelSource
        from serving.loaded_model import load_source
        model = load_source("handed", ModelSource.model_validate_json(sys.argv[1]), cache_dir=sys.argv[2])
        answer = model.predict(__import__("polars").DataFrame(json.loads(sys.argv[3]), schema=["a", "b", "c"], orient="row"))
        print(json.dumps({"mlflow": "mlflow" in sys.modules, "version": model.version, **answer}))
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", child, source.model_dump_json(), str(tmp_path), json.dumps(x[:20].tolist())],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    answer = json.loads(run.stdout.strip().splitlines()[-1])
    assert answer["mlflow"] is False and answer["version"] == version
    np.testing.assert_array_equal(answer["predictions"], booster.predict(x[:20]))
    model = load_source("handed", source, cache_dir=str(tmp_path))
    store_files = list(Path(url2pathname(urlparse(source.artifact_uri).path)).rglob("*.lgb"))
    assert Path(model.model_file).parent == Path(model.local_dir) and store_files
    shutil.rmtree(model.local_dir)  # what a swap does to the version it replaces: the store keeps its files
    assert all(f.exists() for f in store_files)


def test_a_source_elsewhere_is_downloaded_through_mlflow_and_a_bad_one_named(registry, tmp_path):
    uri, register = registry
    x, y, params = _data("binary")
    booster = lgb.train({**params, "verbose": -1}, lgb.Dataset(x, y, feature_name=["a", "b", "c"]), 5)
    version = register(booster, "far", {"mlops.feature_columns": json.dumps(["a", "b", "c"])})
    # a URI that is no local folder (an object store, a tracking server's artifacts) goes through MLflow's download
    far = ModelSource(version=version, artifact_uri=f"models:/far/{version}")
    model = load_source("far", far, cache_dir=str(tmp_path), tracking_uri=uri)
    np.testing.assert_array_equal(
        model.predict(pl.DataFrame(x[:5], schema=["a", "b", "c"], orient="row"))["predictions"], booster.predict(x[:5])
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=f"no LightGBM text file .* in {empty.as_uri()}"):
        load_source("far", ModelSource(version=version, artifact_uri=empty.as_uri()), cache_dir=str(tmp_path))
    with pytest.raises(ModelLoadError, match="tag mlops.task is 'ranking'"):
        load_source("far", ModelSource(version=version, artifact_uri=empty.as_uri(), tags={"mlops.task": "ranking"}))
