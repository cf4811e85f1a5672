"""What a drift check says it compared against."""

from types import SimpleNamespace

from mlops_assets.core.names import PROFILES
from mlops_assets.monitoring.drift_metrics import describe_reference
from resources.registered_models import Champion
from tests.support.models import flights_variant, train

PLAN = SimpleNamespace(partition_start="2013-01-10", partition_end="2013-01-30", features_version=0)


def test_the_reference_is_named_as_it_is_read():
    """After an erasure tagged the champion, drift read its days as they are now, while the feature_drift metadata
    still named the recorded Delta version (`features v0`), which the erasure's vacuum may have removed."""
    assert describe_reference(Champion(1, PLAN)) == "2013-01-10 .. 2013-01-30 (features v0)"
    erased = describe_reference(Champion(1, PLAN, erased="3efe8c8dd02d"))
    assert erased.startswith("2013-01-10 .. 2013-01-30 (features as they are now, without the rows erasure 3efe8c8dd02d removed")
    assert "(features v0)" not in erased


def test_a_champion_whose_window_was_erased_whole_fails_the_check_saying_so(model_home):
    """Every row of the champion's training window erased: the drift check failed with Evidently's bare
    ZeroDivisionError (no column to compare), and an empty profile was cached for the version."""
    plat = model_home.platform(flights_variant())
    assert train(plat).success  # window 2013-01-08 .. 2013-01-28
    config = {"ops": {"flights__erase": {"config": {"where": "month = 1", "by": "dpo", "reason": "all of January"}}}}
    assert plat.defs.resolve_job_def("flights_erase").execute_in_process(instance=plat.instance, run_config=config).success
    result = plat.run("flights_monitor", "2013-02-01", raise_on_error=False)
    (failure,) = [e.step_failure_data for e in result.all_events if e.is_step_failure]
    assert failure.user_failure_data is not None, failure.error.message  # a dg.Failure, not an exception
    message = failure.user_failure_data.description
    assert "model flights v1's training window 2013-01-08 .. 2013-01-28" in message and "holds no feature rows any more" in message
    assert plat.delta.scan("flights", PROFILES) is None  # nothing cached for v1
