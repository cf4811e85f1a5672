"""The model asset's step fails with one line naming the mistake, which `mlops status` shows as the reason."""

from __future__ import annotations

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
