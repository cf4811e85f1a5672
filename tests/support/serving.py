"""Fixtures for the serving tests: registered models, one shared Ray/Serve instance, a deployed app.

Models follow the registry contract of the training issue (LightGBM text model
logged with mlflow.lightgbm, version tags, `champion`/`challenger` aliases) in a
private SQLite MLflow, trained for a few rounds on the shared flights features.
The shared home is read-only, so its Delta tables are copied into a private home
that also receives the prediction log.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import lightgbm as lgb
import polars as pl
import pytest
import requests

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.feature_contract import (
    FeatureReference,
    categories,
    load_feature_module,
)
from mlops_assets.core.names import FEATURES
from mlops_assets.core.partitions import partitions_before
from mlops_assets.defs.flights.upstream import day_frame
from resources.delta_lake import DeltaLakeResource
from resources.pipeline_tables import read_clean, read_reference
from tests.support.network import free_port

SERVE_DAY = date(2013, 2, 5)  # the day after the last ingested one: requests are "today's" flights


@dataclass
class Registry:
    tracking_uri: str
    delta: DeltaLakeResource
    decl: PipelineDeclaration
    boosters: dict[int, lgb.Booster] = field(default_factory=dict)
    champion: int = 0
    challenger: int = 0

    def set_alias(self, alias: str, version: int) -> None:
        from mlflow import MlflowClient

        MlflowClient(self.tracking_uri, self.tracking_uri).set_registered_model_alias(self.decl.name, alias, str(version))

    def register(self, booster: lgb.Booster, categorical: list[str]) -> int:
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        with mlflow.start_run(experiment_id=self._experiment()):
            info = mlflow.lightgbm.log_model(booster, name="model", registered_model_name=self.decl.name)
        version = int(info.registered_model_version)
        from mlflow import MlflowClient

        client = MlflowClient(self.tracking_uri, self.tracking_uri)
        tags = {
            "mlops.feature_columns": json.dumps(booster.feature_name()),
            "mlops.categorical_features": json.dumps(categorical),
            "mlops.task": "regression",
        }
        for k, v in tags.items():
            client.set_model_version_tag(self.decl.name, str(version), k, v)
        self.boosters[version] = booster
        return version

    def _experiment(self) -> str:
        import mlflow

        exp = mlflow.get_experiment_by_name(self.decl.name)
        if exp is not None:
            return exp.experiment_id
        root = Path(self.tracking_uri.removeprefix("sqlite:///")).parent
        return mlflow.create_experiment(self.decl.name, artifact_location=(root / "artifacts").as_uri())


def feature_columns(frame: pl.DataFrame, decl: PipelineDeclaration) -> list[str]:
    reserved = {*decl.table_schema.unique, decl.target.column, "_source_row", "_partition"}
    return [c for c in frame.columns if c not in reserved]


def train(features: pl.DataFrame, decl: PipelineDeclaration, rounds: int, leaves: int) -> lgb.Booster:
    data = features.filter(pl.col(decl.target.column).is_not_null())
    cols = feature_columns(data, decl)
    module = load_feature_module(decl)
    x = data.select(cols).cast(pl.Float64).to_numpy()
    ds = lgb.Dataset(
        x,
        data.get_column(decl.target.column).to_numpy(),
        feature_name=cols,
        categorical_feature=[c for c in module.categorical if c in cols],
        free_raw_data=False,
    )
    params = {"objective": "regression", "num_leaves": leaves, "learning_rate": 0.1, "verbose": -1, "seed": 7, "num_threads": 1}
    return lgb.train(params, ds, num_boost_round=rounds)


@pytest.fixture(scope="session")
def serving_registry(flights_ingested, tmp_path_factory) -> Registry:
    """Two registered flights versions: v1 is `champion`, v2 is `challenger`."""
    home = tmp_path_factory.mktemp("serving_home")
    shutil.copytree(Path(flights_ingested.delta.root) / "flights", home / "delta" / "flights")
    (home / "mlflow").mkdir()
    decl = flights_ingested.declarations["flights"]
    reg = Registry(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}", DeltaLakeResource(root=str(home / "delta")), decl)
    features = reg.delta.scan("flights", FEATURES).collect()  # type: ignore[union-attr]
    module = load_feature_module(decl)
    reg.champion = reg.register(train(features, decl, rounds=8, leaves=15), module.categorical)
    reg.challenger = reg.register(train(features, decl, rounds=12, leaves=31), module.categorical)
    reg.set_alias("champion", reg.champion)
    reg.set_alias("challenger", reg.challenger)
    return reg


def request_records(n: int, day: date = SERVE_DAY) -> list[dict]:
    """Real flights of `day` as a client sends them: input columns only, datetimes as ISO strings."""
    from mlops_assets.defs.flights.features import INPUT_COLUMNS

    frame = day_frame(day).filter(pl.col("dep_delay").is_not_null()).select(INPUT_COLUMNS).head(n)
    return frame.with_columns(pl.col("time_hour").dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_dicts()


def offline_features(reg: Registry, records: list[dict], day: date = SERVE_DAY) -> pl.DataFrame:
    """Features computed the way the features asset computes them for `day` (independent of serving code)."""
    decl = reg.decl
    module = load_feature_module(decl)
    tables, _ = read_reference(reg.delta, decl.name, list(decl.landing.reference_tables))
    history = read_clean(reg.delta, decl.name, partitions_before(decl, day.isoformat(), decl.features.history_days))
    tables.update(module.history_stats(history.select(list(decl.table_schema.columns))))  # type: ignore[union-attr]
    raw = day_frame(day).filter(pl.col("dep_delay").is_not_null()).head(len(records))
    return module.build(raw.select(list(decl.table_schema.columns)), FeatureReference(tables=tables, categories=categories(decl)))


@dataclass
class ServeInstance:
    base_url: str
    port: int


@pytest.fixture(scope="session")
def ray_serve(local_ray) -> Iterator[ServeInstance]:
    """Serve's proxy on the session's Ray instance, on loopback; shut down at the end."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield ServeInstance(f"http://127.0.0.1:{port}", port)
    finally:
        serve.shutdown()


@pytest.fixture(scope="session")
def served(ray_serve, serving_registry) -> ServeInstance:
    """The flights application on the shared Serve: v1 (champion) with v2 as challenger. Tests that move
    aliases, traffic or replicas put them back as they found them."""
    from serving import control

    settings = serving_settings(serving_registry)
    control.deploy_pipeline(serving_registry.decl, settings, serving_registry.champion, serving_registry.challenger, gateway_replicas=1)
    control.wait_for_version("flights", serving_registry.champion, timeout_s=240)
    wait_http(ray_serve.base_url + "/v2/models/flights/ready")
    return ray_serve


@pytest.fixture
def champion_server(serving_registry):
    """The model server class Serve runs in each replica, in this process, holding the champion."""
    from resources.serving import ServeSettings
    from serving.deployments import ModelServer

    s = ModelServer.func_or_class(
        ServeSettings(pipeline="flights", tracking_uri=serving_registry.tracking_uri, delta_root=serving_registry.delta.root).model_dump(),
        "champion",
    )
    yield s
    s.close()


def serving_resource(reg, port: int):
    """The ServingResource of Dagster runs against the test Serve (deployment and rollout assets, sensors)."""
    from resources.serving import ServingResource

    return ServingResource(
        http_host="127.0.0.1",
        http_port=port,
        tracking_uri=reg.tracking_uri,
        delta_root=reg.delta.root,
        gateway_replicas=1,
        rollout_timeout_s=240,
        log_flush_seconds=0.3,
    )


def serving_settings(reg):
    from resources.serving import ServeSettings

    return ServeSettings(pipeline="flights", tracking_uri=reg.tracking_uri, delta_root=reg.delta.root, log_flush_seconds=0.3)


def wait_http(url: str, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout_s}s")
