"""Training, gates and promotion through real Dagster runs, a real MLflow SQLite store and real Delta tables."""

from __future__ import annotations

import json

import lightgbm as lgb

from mlops_assets.audit_log import history
from mlops_assets.registry import CHALLENGER, CHAMPION, alias_version
from tests.model_fixtures import flights_decl, model_home  # noqa: F401


def test_first_model_is_promoted_on_floors(model_home):
    plat = model_home.platform(flights_decl())
    result = plat.run("flights_train")
    assert result.success
    client = model_home.registry.client()
    champion = alias_version(client, "flights", CHAMPION)
    assert champion is not None and int(champion.version) == 1
    tags = champion.tags
    for key in ["mlops.pipeline", "mlops.task", "mlops.feature_columns", "mlops.categorical_features", "mlops.declaration_hash",
                "mlops.feature_code_hash", "mlops.features_table", "mlops.features_delta_version", "mlops.partition_start",
                "mlops.partition_end", "mlops.git_commit", "mlops.dagster_run_id", "metric.mae"]:
        assert tags.get(key), key
    assert tags["mlops.partition_end"] == "2013-02-04"
    assert tags["mlops.partition_start"] == "2013-01-15"
    assert tags["mlops.dagster_run_id"] == result.run_id
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"quality_floors": True, "no_regression": True, "data_checks": True}
    events = history(plat.delta, "flights")
    assert events.get_column("action").to_list() == ["promote"]
    assert events.row(0, named=True)["model_version"] == 1 and events.row(0, named=True)["from_version"] is None
