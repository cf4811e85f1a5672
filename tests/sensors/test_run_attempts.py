"""Asking again for work whose run failed, on a real Dagster instance with real runs."""

from __future__ import annotations

import dagster as dg
import pytest

from mlops_assets.core.names import RUN_KEY_TAG
from sensors.run_attempts import RETRIES, WILL_RETRY_TAG, follow_up, next_attempt, with_attempt


@dg.op(config_schema={"fail": dg.Field(bool, default_value=False)})
def step(context) -> None:
    if context.op_config["fail"]:
        raise RuntimeError("the store is unreachable")


@dg.job
def work():
    step()


@dg.job
def other_work():  # another pipeline's job: its run keys are its own
    step()


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def run(instance: dg.DagsterInstance, run_key: str, fail: bool, job: dg.JobDefinition = work) -> dg.DagsterRun:
    config = {"ops": {"step": {"config": {"fail": fail}}}}
    return job.execute_in_process(instance=instance, run_config=config, tags={RUN_KEY_TAG: run_key}, raise_on_error=False).dagster_run


def test_a_failed_run_is_asked_for_again_under_a_new_key_until_the_retries_are_spent(instance):
    first = next_attempt(instance, "work", "work:1")
    assert (first.state, first.run_key, first.is_retry) == ("request", "work:1", False)
    failures = [run(instance, "work:1", fail=True)]
    for n in range(1, RETRIES + 1):
        attempt = next_attempt(instance, "work", "work:1")
        assert (attempt.state, attempt.run_key, attempt.is_retry) == ("request", f"work:1~retry-{n}", True)
        assert attempt.why == f"retry {n} of {RETRIES}: run {failures[-1].run_id} failure"
        request = with_attempt(dg.RunRequest(run_key="work:1", tags={"mlops/trigger": "test"}), attempt, "mlops/reason")
        assert request.run_key == attempt.run_key and request.tags == {"mlops/trigger": "test", "mlops/reason": attempt.why}
        failures.append(run(instance, attempt.run_key, fail=True))
    gave_up = next_attempt(instance, "work", "work:1")
    assert (
        gave_up.state == "given_up" and gave_up.why == f"gave up on work:1 after {RETRIES + 1} failed runs; the last: {failures[-1].run_id}"
    )


def test_a_run_in_flight_is_waited_for_and_a_succeeded_one_is_done(instance):
    queued = instance.create_run_for_job(job_def=work, tags={RUN_KEY_TAG: "work:2"})
    assert next_attempt(instance, "work", "work:2").state == "waiting"
    instance.report_run_canceled(queued)  # canceled counts as failed: asked for again
    assert next_attempt(instance, "work", "work:2").run_key == "work:2~retry-1"
    run(instance, "work:2~retry-1", fail=False)
    done = next_attempt(instance, "work", "work:2")
    assert (done.state, done.run_key) == ("succeeded", "work:2~retry-1")


def test_runs_of_another_job_and_runs_dagster_retries_itself_are_not_this_sensors_failures(instance):
    """Another pipeline's first serving-drift check has the same run key: its success stopped this one's for good.
    A failed run Dagster's run retries will launch again is waited for, not doubled."""
    run(instance, "serving-drift:0", fail=False, job=other_work)
    assert next_attempt(instance, "work", "serving-drift:0").state == "request"
    failed = instance.create_run_for_job(job_def=work, tags={RUN_KEY_TAG: "work:3", WILL_RETRY_TAG: "true"})
    instance.report_run_failed(failed)
    assert next_attempt(instance, "work", "work:3").state == "waiting"


def test_follow_up_sorts_what_a_sensor_asked_for(instance):
    run(instance, "ok", fail=False)
    run(instance, "bad", fail=True)
    for key in ["spent"] + [f"spent~retry-{n}" for n in range(1, RETRIES + 1)]:
        run(instance, key, fail=True)
    followed = follow_up(instance, "work", {"ok": "a", "bad": "b", "spent": "c", "unlaunched": "d"})
    assert followed.watching == {"bad": "b", "unlaunched": "d"}  # a succeeded run drops out
    assert [(a.run_key, what) for a, what in followed.again] == [("bad~retry-1", "b")]  # unlaunched: not asked twice
    assert [a.run_key for a in followed.given_up] == ["spent"]
