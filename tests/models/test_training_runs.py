"""`mlops status`'s last training: read from Dagster's run history, whichever run trained the model."""

from __future__ import annotations

import dagster as dg

from mlops_assets.models.training_runs import last_training
from tests.support.models import flights_variant


def _model_asset(fail: bool) -> dg.AssetsDefinition:
    @dg.asset(key=["flights", "model"])
    def model() -> None:
        if fail:
            raise dg.Failure("fewer than training.min_rows rows")

    return model


def test_a_model_materialized_outside_the_training_job_is_the_last_training(tmp_path):
    """The UI's Materialize on flights/model (or `dagster asset materialize`) runs an asset job, not flights_train:
    it trained and registered a version, yet `mlops status` said `last training: none`."""
    decl = flights_variant()
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        assert last_training(instance, decl) is None
        ok = dg.materialize([_model_asset(fail=False)], instance=instance)
        run = last_training(instance, decl)
        assert run is not None and (run.run_id, run.state) == (ok.run_id, "succeeded")

        failed = dg.materialize([_model_asset(fail=True)], instance=instance, raise_on_error=False)
        run = last_training(instance, decl)
        assert (run.run_id, run.state) == (failed.run_id, "failed") and "fewer than training.min_rows" in run.reason


def test_other_assets_runs_are_not_trainings(tmp_path):
    @dg.asset(key=["flights", "promotion"])
    def promotion() -> None:
        return None

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        dg.materialize([promotion], instance=instance)
        assert last_training(instance, flights_variant()) is None


def test_a_training_its_gates_failed_names_the_gate(tmp_path):
    """The reason was the first line of Dagster's message, "1 blocking asset check failed with ERROR severity:",
    without the gate, which is on the next line."""

    @dg.asset(key=["flights", "model"], check_specs=[dg.AssetCheckSpec("quality_floors", asset=["flights", "model"], blocking=True)])
    def model():
        yield dg.Output(None)
        yield dg.AssetCheckResult(check_name="quality_floors", passed=False, severity=dg.AssetCheckSeverity.ERROR)

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        dg.materialize([model], instance=instance, raise_on_error=False)
        reason = last_training(instance, flights_variant()).reason
        assert "blocking asset check failed" in reason and "flights/model: quality_floors" in reason
