"""Reproduce, a training run that dies half-way, and bad input to the model commands and declarations."""

from __future__ import annotations

from datetime import date

import dagster as dg
import numpy as np
import polars as pl
import pytest

from mlops_assets.core.declaration import DeclarationError
from mlops_assets.core.names import TRIGGER_TAG
from mlops_assets.definitions import build_definitions
from mlops_assets.defs.flights.upstream import land_days
from mlops_assets.models import gates, training
from mlops_assets.models.reproduce import compare_predictions
from resources.audit_log import history
from tests.support.models import (
    SMALL_GATES,
    WORSE,
    actions,
    aliases,
    flights_variant,
    train,
)


def test_reproduce_gives_identical_predictions_from_the_recorded_delta_version(model_home, capsys):
    decl = flights_variant()
    model_home.declare(decl)
    plat = model_home.platform(decl)
    assert plat.run("flights_train").success
    recorded = int(model_home.registry.client().get_model_version("flights", "1").tags["mlops.features_delta_version"])

    # the features table moves on (a day of the window is rewritten): reproduce must read the recorded version
    day = "2013-01-20"
    frame = plat.delta.read_partitions("flights", "features", [day]).drop("_partition")
    plat.delta.write_partition("flights", "features", frame.with_columns(pl.col("dep_delay") * 0 + 999.0), day, "test")
    assert plat.delta.version("flights", "features") > recorded

    code, out, err = model_home.mlops("reproduce", "flights", "1", capsys=capsys)
    assert code == 0, out + err
    assert "REPRODUCED: all" in out and "predictions identical" in out
    assert f"@v{recorded}" in out and "2013-01-15..2013-02-04" in out


def test_a_mismatch_is_reported_with_counts():
    same = compare_predictions(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0]))
    assert same.identical and same.rows == 3
    differ = compare_predictions(np.array([[0.2, 0.8], [0.5, 0.5]]), np.array([[0.2, 0.8], [0.4, 0.6]]))
    assert not differ.identical and differ.differing == 1 and differ.max_abs_diff == pytest.approx(0.1)
    with pytest.raises(ValueError, match="shapes differ"):
        compare_predictions(np.zeros(3), np.zeros(4))


def test_a_run_killed_after_registration_leaves_no_new_alias(model_home, monkeypatch):
    plat = model_home.platform(flights_variant())
    assert plat.run("flights_train").success
    assert aliases(model_home) == (1, None)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("worker killed while evaluating the gates")

    # killed after the version was registered, before any gate or alias move
    monkeypatch.setattr(gates, "evaluate", killed)
    with pytest.raises(KeyboardInterrupt):
        model_home.platform(flights_variant(training={"window_days": 22})).run("flights_train")
    client = model_home.registry.client()
    assert int(client.get_model_version("flights", "2").version) == 2  # registered ...
    assert client.get_model_version("flights", "2").tags["mlops.status"] == "candidate"
    assert aliases(model_home) == (1, None)  # ... but nothing points at it
    assert actions(plat) == [("promote", 1)]

    # killed in the middle of training: not even a version
    monkeypatch.undo()
    monkeypatch.setattr(training, "train", lambda plan, data: (_ for _ in ()).throw(MemoryError("out of memory")))
    result = model_home.platform(flights_variant()).run("flights_train", raise_on_error=False)
    assert not result.success
    assert [int(v.version) for v in client.search_model_versions("name='flights'")] in ([2, 1], [1, 2])
    assert aliases(model_home) == (1, None)


def test_the_killed_candidate_cannot_be_approved(model_home, monkeypatch, capsys):
    decl = flights_variant(policy="manual")
    model_home.declare(decl)
    monkeypatch.setattr(gates, "evaluate", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
    assert not model_home.platform(decl).run("flights_train", raise_on_error=False).success
    code, _, err = model_home.mlops("approve", "flights", "1", "--by", "x", "--reason", "y", capsys=capsys)
    assert code == 2 and "has not been through the gates" in err
    assert aliases(model_home) == (None, None)


def test_bad_input_is_a_clear_error_and_changes_nothing(model_home, capsys):
    decl = flights_variant()
    model_home.declare(decl)
    plat = model_home.platform(decl)
    assert plat.run("flights_train").success
    assert not model_home.platform(flights_variant(training=WORSE)).run("flights_train", raise_on_error=False).success
    before = history(plat.delta, "flights")
    assert actions(plat) == [("promote", 1), ("reject", 2)]

    def unchanged():
        assert aliases(model_home) == (1, None)
        assert history(plat.delta, "flights").equals(before)

    code, _, err = model_home.mlops("approve", "flights", "7", "--by", "ann", "--reason", "why not", capsys=capsys)
    assert code == 2 and "model flights has no version 7" in err
    unchanged()
    code, _, err = model_home.mlops("approve", "flights", "2", "--by", "ann", "--reason", "override", capsys=capsys)
    assert code == 2 and "v2 was rejected by the gates (failed: no_regression)" in err
    unchanged()
    code, _, err = model_home.mlops("approve", "flights", "1", "--by", "ann", "--reason", "again", capsys=capsys)
    assert code == 2 and "already is the champion" in err
    code, _, err = model_home.mlops("approve", "flights", "zero", "--by", "ann", "--reason", "x", capsys=capsys)
    assert code == 2 and "version must be a positive integer" in err
    code, _, err = model_home.mlops("reproduce", "flights", "9", capsys=capsys)
    assert code == 2 and "no version 9" in err
    code, _, err = model_home.mlops("rollback", "flights", "--by", "ann", capsys=capsys)
    assert code == 2 and "no previous champion" in err
    code, _, err = model_home.mlops("status", "nope", capsys=capsys)
    assert code == 2 and "no pipeline named 'nope'" in err
    unchanged()

    # the Dagster approval refuses the rejected version the same way
    approval = plat.defs.resolve_job_def("flights_approve").execute_in_process(
        instance=model_home.instance,
        run_config={"ops": {"flights__approve": {"config": {"version": 2, "approver": "ann", "reason": "override"}}}},
        raise_on_error=False,
    )
    assert not approval.success
    failure = [e for e in approval.all_events if e.is_step_failure][0]
    assert "rejected by the gates" in failure.step_failure_data.error.message
    unchanged()
    # a misspelt LightGBM parameter, which LightGBM would ignore and train on its default, fails the training run;
    # so does an alias of what the platform sets, which overrode the declared value (n_estimators: 5 trees)
    params = {"learning_rate": 0.1, "num_leavs": 7, "n_estimators": 5, "random_state": 1}
    result = model_home.platform(flights_variant(training={"params": params})).run("flights_train", raise_on_error=False)
    error = [e for e in result.all_events if e.is_step_failure][0].step_failure_data.error.to_string()
    assert "n_estimators (LightGBM's num_iterations): the platform sets it (training.num_boost_round)" in error
    assert "num_leavs: LightGBM does not know it" in error
    assert "random_state (LightGBM's seed): the platform sets it (training.seed)" in error
    unchanged()


def test_rollback_without_any_champion_is_an_error(model_home, capsys):
    model_home.declare(flights_variant())
    code, _, err = model_home.mlops("rollback", "flights", "--by", "ann", capsys=capsys)
    assert code == 2 and "has no champion to roll back" in err
    code, out, _ = model_home.mlops("history", "flights", capsys=capsys)
    assert code == 0 and "no promotions" in out
    code, out, _ = model_home.mlops("status", capsys=capsys)
    assert code == 0 and "champion: none" in out


@pytest.mark.parametrize(
    ("gates_spec", "message"),
    [
        ({"floors": {"maee": 20.0}}, "unknown metric names ['maee']"),
        ({"compare_metrics": ["accuracy_score"]}, "unknown metric names ['accuracy_score']"),
    ],
)
def test_unknown_gate_metric_names_are_refused_when_declared(gates_spec, message):
    with pytest.raises(DeclarationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        flights_variant(gates={**SMALL_GATES, **gates_spec})


def test_gate_metrics_of_another_task_are_refused_when_the_pipeline_is_built():
    decl = flights_variant(gates={"floors": {"auc": 0.7}})  # a known metric, but not of a regression model
    with pytest.raises(DeclarationError, match=r"gates.floors names metrics \['auc'\] that a regression model does not have"):
        build_definitions([decl], resources={})
    with pytest.raises(DeclarationError, match="must be greater than"):
        build_definitions([flights_variant(training={"window_days": 8})], resources={})


def test_training_before_any_data_fails_clearly(platform):
    result = platform.run("flights_train", raise_on_error=False)
    assert not result.success
    failure = [e for e in result.all_events if e.is_step_failure][0]
    assert "no featurized partitions yet: ingest some days first" in failure.step_failure_data.error.message


def test_training_with_too_few_rows_fails_clearly_and_registers_nothing(model_home, capsys):
    code, out, _ = model_home.mlops("status", "flights", capsys=capsys)
    assert code == 0 and "last training: none" in out
    plat = model_home.platform(flights_variant(training={"min_rows": 10**7}))
    result = plat.launch(dg.RunRequest(run_key="drift-1", job_name="flights_train", tags={TRIGGER_TAG: "drift"}))
    failure = [e for e in result.all_events if e.is_step_failure][0]
    assert "fewer than training.min_rows=10000000" in failure.step_failure_data.error.message
    assert model_home.registry.client().search_registered_models() == []
    # nothing in the registry or the audit log: `mlops status` says the attempt failed, and why
    code, out, _ = model_home.mlops("status", "flights", capsys=capsys)
    assert code == 0 and "champion: none" in out
    line = next(line for line in out.splitlines() if "last training:" in line)
    assert line.startswith("  last training: failed (started ") and f", drift; dagster run {result.run_id}): " in line
    assert "fewer than training.min_rows=10000000" in line


def test_the_window_end_is_configurable_and_must_be_a_featurized_day(model_home):
    plat = model_home.platform(flights_variant())
    job = plat.defs.resolve_job_def("flights_train")
    config = {"ops": {"flights__model": {"config": {"end_partition": "2013-03-01"}}}}
    result = job.execute_in_process(instance=model_home.instance, run_config=config, raise_on_error=False)
    failure = [e for e in result.all_events if e.is_step_failure][0]
    assert "day 2013-03-01 has no features" in failure.step_failure_data.error.message

    config = {"ops": {"flights__model": {"config": {"end_partition": "2013-02-01"}}}}
    assert job.execute_in_process(instance=model_home.instance, run_config=config).success
    tags = model_home.registry.client().get_model_version("flights", "1").tags
    assert (tags["mlops.partition_start"], tags["mlops.partition_end"], tags["mlops.holdout_start"]) == (
        "2013-01-12",
        "2013-02-01",
        "2013-01-29",
    )


def test_the_window_and_its_splits_are_featurized_days_across_a_gap_in_the_data(model_home):
    """The README's walk-away lands July into a platform holding January: counted in calendar days, the window
    ending on July 3 held only July, its validation days fell in the gap, and the retraining the drift sensor
    asked for failed ("the validation part of the window ... has no rows with a target")."""
    plat = model_home.platform(flights_variant())
    land_days(plat.declarations["flights"], plat.landing, date(2013, 7, 1), 3)
    plat.ingest_range("flights", "2013-07-01", "2013-07-03")
    plan = training.plan_training(plat.declarations["flights"], plat.delta)
    # 21 featurized days: 2013-01-18 .. 02-04 and 07-01 .. 07-03; hold-out the last 4, validation the 4 before
    assert (plan.partition_start, plan.validation_start, plan.holdout_start, plan.partition_end) == (
        "2013-01-18",
        "2013-01-31",
        "2013-02-04",
        "2013-07-03",
    )
    assert train(plat).success

    with pytest.raises(training.TrainingDataError, match="8 featurized days up to 2013-01-08; training needs more than 4 hold-out"):
        training.plan_training(plat.declarations["flights"], plat.delta, end="2013-01-08")


def test_a_feature_column_without_a_value_in_the_window_is_no_model_input(model_home, monkeypatch):
    """A renamed feature leaves its old column in the features table (merge_schema), null from the rebuild on: it
    became a model input, and serving refused the model. A misspelt CATEGORICAL_FEATURES name trained as a number."""
    from mlops_assets.core.feature_contract import load_feature_module
    from mlops_assets.core.names import FEATURES, PARTITION_COLUMN

    decl = flights_variant()
    delta = model_home.platform(decl).delta
    table = delta.scan("flights", FEATURES).collect()
    days = sorted(table.get_column(PARTITION_COLUMN).unique().to_list())
    last = days[-1]

    def rebuild(frame: pl.DataFrame) -> None:  # every day, as the features asset writes them
        delta.write_partition_stream("flights", FEATURES, days, [frame], "test", merge_schema=True)

    rebuild(table.with_columns(pl.lit(1.0).alias("renamed_away")))  # the feature under its old name
    # renamed: the rebuilt files do not hold the old column at all (so no statistics for it); a new column has
    # values on one day of the window only
    rebuild(table.with_columns(pl.when(pl.col(PARTITION_COLUMN) == last).then(pl.lit(1.0)).alias("sparse")))
    plan = training.plan_training(decl, delta, end=last)
    assert "renamed_away" not in plan.feature_columns and {"temp", "sparse"} <= set(plan.feature_columns)

    module = load_feature_module(decl)
    monkeypatch.setattr(module.module, "CATEGORICAL_FEATURES", ["carrier_code", "origin_cod"])
    with pytest.raises(training.TrainingDataError, match=r"CATEGORICAL_FEATURES names \['origin_cod'\]"):
        training.plan_training(decl, delta)
