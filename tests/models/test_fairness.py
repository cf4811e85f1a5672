"""Fairness as a declared, blocking gate: the hold-out metric per group and the largest relative gap."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from mlops_assets.core.declaration import DeclarationError, parse_declaration
from mlops_assets.core.metrics import RATE_METRICS
from mlops_assets.models.gates import fairness_gate
from tests.support.models import aliases, flights_variant


def test_a_gap_over_the_limit_blocks_the_model_and_one_within_passes(model_home):
    within = flights_variant(gates={"fairness": {"groups": ["origin", "carrier"], "metric": "mae", "max_gap": 0.99, "min_group_rows": 50}})
    result = model_home.platform(within).run("flights_train")
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["fairness"].passed and aliases(model_home) == (1, None)
    meta = checks["fairness"].metadata
    groups = meta["groups"].value
    assert {r["group"] for r in groups if r["column"] == "origin"} == {"EWR", "JFK", "LGA"}
    assert all(r["mae"] > 0 and r["rows"] > 0 for r in groups)
    assert any(not r["gated"] for r in groups if r["column"] == "carrier")  # small carriers are reported, not gated
    origin = [r["mae"] for r in groups if r["column"] == "origin"]
    assert meta["gaps"].value["origin"] == pytest.approx((max(origin) - min(origin)) / max(origin))

    tight = flights_variant(training={"window_days": 22}, gates={"fairness": {"groups": ["origin"], "metric": "mae", "max_gap": 0.001}})
    blocked = model_home.platform(tight).run("flights_train", raise_on_error=False)
    assert not blocked.success  # a blocking check failed: the promotion step did not run
    fairness = {e.check_name: e for e in blocked.get_asset_check_evaluations()}["fairness"]
    assert not fairness.passed and "FAILED" in fairness.description and "limit 0.1%" in fairness.description
    assert aliases(model_home) == (1, None)

    # gates run again later (`mlops gate`) read the groups from raw as v1's plan found it: a hold-out day landed
    # again since names other flights by the same source rows
    from mlops_assets.models import gates
    from resources.registered_models import plan_of

    plan = plan_of(model_home.registry.client().get_model_version("flights", "1"))
    delta = model_home.platform(within).delta
    assert plan.raw_version is not None and plan.raw_version <= delta.version("flights", "raw")
    holdout = [d for d in delta.partitions("flights", "raw") if plan.holdout_start <= d <= plan.partition_end]
    relanded = {d: delta.read_partitions("flights", "raw", [d]).with_columns(pl.lit("ATL").alias("dest")) for d in holdout}
    delta.write_partitions("flights", "raw", relanded, "test")
    by_dest = flights_variant(gates={"fairness": {"groups": ["dest"], "metric": "mae", "max_gap": 0.99}})  # dest: from raw
    again = next(g for g in gates.evaluate(by_dest, delta, model_home.registry, "1").gates if g.name == "fairness")
    assert len({r["group"] for r in again.metadata["groups"]}) > 10


def test_gap_is_the_spread_over_the_largest_and_small_or_undefined_groups_are_not_gated():
    decl = flights_variant(gates={"fairness": {"groups": ["origin"], "metric": "mae", "max_gap": 0.15, "min_group_rows": 3}})
    groups = pl.DataFrame({"origin": ["A"] * 4 + ["B"] * 4 + ["C"] * 2})
    y = np.zeros(10)
    # mae: A 1.0, B 1.1 (gap 9%), C 5.0 but only 2 rows
    p = np.array([1.0] * 4 + [1.1] * 4 + [5.0] * 2)
    result = fairness_gate(decl, groups, y, p)
    assert result.passed and result.metadata["largest_gap"] == pytest.approx(0.1 / 1.1)
    p[4:8] = 1.25  # B 1.25: gap 20%
    assert not fairness_gate(decl, groups, y, p).passed


def test_fairness_declarations_are_checked_when_loaded():
    with pytest.raises(DeclarationError, match="gates.fairness.groups names columns that are not declared: \\['airport'\\]"):
        flights_variant(gates={"fairness": {"groups": ["airport"], "metric": "mae", "max_gap": 0.1}})
    for metric in ("tpr", "r2"):  # a rate of classifiers; a metric that can be negative (the gap is relative)
        with pytest.raises(DeclarationError, match=f"gates.fairness.metric '{metric}' is not a fairness metric of a regression model"):
            flights_variant(gates={"fairness": {"groups": ["origin"], "metric": metric, "max_gap": 0.1}})


def test_binary_rates_are_the_models_positive_rate_and_true_positive_rate():
    """A binary model's fairness gate compares rates of what the model predicts (threshold 0.5), not of the truth:
    positive_rate over every row, tpr over the rows whose truth is positive."""
    y = np.array([0, 0, 1, 1])
    assert RATE_METRICS["positive_rate"].fn(y, np.array([0.9, 0.9, 0.9, 0.1])) == 0.75
    assert RATE_METRICS["tpr"].fn(np.array([1, 1, 0, 0]), np.array([0.9, 0.1, 0.9, 0.9])) == 0.5


def test_a_binary_rate_gap_is_one_minus_the_four_fifths_ratio():
    """Groups predicted positive at rates 0.5 and 0.25 (the truth's rates the same in both): the gap is
    1 - 0.25/0.5, passing a max_gap of 0.5 and failing one just under it."""
    from tests.pipelines.classifier_features import declaration

    def binary(metric: str, max_gap: float):
        data = declaration("binary").model_dump(mode="json", by_alias=True)
        data["gates"]["fairness"] = {"groups": ["color"], "metric": metric, "max_gap": max_gap, "min_group_rows": 3}
        return parse_declaration(data, "binary (test)")

    groups = pl.DataFrame({"color": ["red"] * 4 + ["blue"] * 4})
    y = np.array([1, 1, 0, 0] * 2)
    p = np.array([0.9, 0.9, 0.1, 0.1] + [0.9, 0.1, 0.1, 0.1])
    result = fairness_gate(binary("positive_rate", 0.5), groups, y, p)
    assert result.passed and result.metadata["largest_gap"] == pytest.approx(1 - 0.25 / 0.5)
    assert {r["group"]: r["positive_rate"] for r in result.metadata["groups"]} == {"blue": 0.25, "red": 0.5}
    assert not fairness_gate(binary("positive_rate", 0.49), groups, y, p).passed
    # the same predictions by true positive rate: red finds both positives, blue one of two
    tpr = fairness_gate(binary("tpr", 0.49), groups, y, p)
    assert {r["group"]: r["tpr"] for r in tpr.metadata["groups"]} == {"blue": 0.5, "red": 1.0}
    assert not tpr.passed and tpr.metadata["largest_gap"] == pytest.approx(0.5)
