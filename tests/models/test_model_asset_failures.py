"""The model asset's step fails with one line naming the mistake, which `mlops status` shows as the reason."""

from __future__ import annotations

import dagster as dg
import pytest

from mlops_assets.models.assets import TrainConfig
from mlops_assets.models.training import TrainingDataError, plan_training
from tests.support.models import flights_variant


class _FeaturizedDays:
    """A Delta resource holding featurized days and nothing else plan_training reaches before the window end."""

    def version(self, pipeline, table):
        return 3

    def partitions(self, pipeline, table):
        return ["2013-01-01", "2013-01-02"]


@pytest.mark.parametrize("end", ["20130101", "2013-1-1", "2024-03-03-05:00"])
def test_a_window_end_of_another_form_is_no_config_error_but_a_day_without_features(end):
    """A pydantic pattern refused '20130101' only as the step started (a traceback, and `mlops status` said
    'DagsterExecutionStepExecutionError'), and refused an hourly pipeline's keys outright."""
    assert TrainConfig(end_partition=end).end_partition == end
    with pytest.raises(TrainingDataError, match=f"day {end} has no features; the window must end on a featurized day"):
        plan_training(flights_variant(), _FeaturizedDays(), end)


def test_unknown_lightgbm_parameters_fail_the_step_with_one_line_and_no_retry(tmp_path, monkeypatch):
    """The declaration error escaped the step: a traceback, and `mlops status` gave
    'DagsterExecutionStepExecutionError: Error occurred while executing op' as the reason."""
    from mlops_assets.models.training_runs import last_training
    from tests.support.platform import Platform

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    decl = flights_variant(training={"params": {"learning_rte": 0.1}})
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        result = Platform(tmp_path, [decl], instance).run("flights_train", raise_on_error=False)
        failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data
        assert failure.user_failure_data is not None  # a dg.Failure: its description, no traceback of our code
        assert failure.user_failure_data.description == "pipeline flights: training.params: learning_rte: LightGBM does not know it"
        assert last_training(instance, decl).reason == failure.user_failure_data.description
