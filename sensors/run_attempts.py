"""Asking again for work whose run failed: the sensors' one rule for it.

A sensor names the work it asks for in the run key (a window of served rows, a range of feature days, a
version's card), and Dagster launches a run key once. Where the sensor's own state moves only when that work
succeeds, a failed run left the same key asked for on every tick and skipped by Dagster every time: the work
waited for good, silently. Each key gets RETRIES more attempts, as `<key>~retry-<n>`, each asked for only once
the attempt before it failed or was canceled; then the sensor says it gave up, naming the last run, and the
failed runs stay in the run history.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import dagster as dg

from mlops_assets.core.names import RUN_KEY_TAG

RETRIES = 3
RETRY_STATUSES = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


@dataclass(frozen=True)
class Attempt:
    """Where the work of one run key stands.

    state: `request` (ask for `run_key` now: the first attempt, or the next after a failed one), `waiting` (an
    attempt is queued or running), `succeeded`, or `given_up` (every attempt failed)."""

    state: Literal["request", "waiting", "succeeded", "given_up"]
    run_key: str
    why: str  # what happened to the runs so far: for a skip reason, a log line or the retry's reason tag

    @property
    def is_retry(self) -> bool:
        return self.state == "request" and "~retry-" in self.run_key


def attempt_key(run_key: str, attempt: int) -> str:
    return run_key if attempt == 0 else f"{run_key}~retry-{attempt}"


# a failed run whose failure is a verdict, not a fault (a training its gates rejected): the reason, else None
Decided = Callable[[dg.DagsterRun], str | None]

WILL_RETRY_TAG = "dagster/will_retry"  # a failed run Dagster's own run retries will launch again (deploy/dagster/dagster.yaml)


def next_attempt(
    instance: dg.DagsterInstance, job_name: str, run_key: str, retries: int = RETRIES, decided: Decided | None = None
) -> Attempt:
    """The attempt to ask for now, or why none is: one run query per attempt made so far. Runs are looked up
    within the job: run keys are the sensor's own (another pipeline's first serving-drift check has the same key).
    A failed run that `decided` names a verdict for is done: asking again would only repeat it."""
    why = ""
    for attempt in range(retries + 1):
        key = attempt_key(run_key, attempt)
        runs = instance.get_runs(filters=dg.RunsFilter(job_name=job_name, tags={RUN_KEY_TAG: key}), limit=1)
        if not runs:
            return Attempt("request", key, why)
        run = runs[0]
        if not run.is_finished or run.tags.get(WILL_RETRY_TAG) == "true":
            return Attempt("waiting", key, f"run {run.run_id} for {key} is {run.status.value.lower()}")
        if run.status not in RETRY_STATUSES:
            return Attempt("succeeded", key, f"run {run.run_id} for {key} succeeded")
        verdict = decided(run) if decided is not None and run.status == dg.DagsterRunStatus.FAILURE else None
        if verdict:
            return Attempt("succeeded", key, verdict)
        why = f"retry {attempt + 1} of {retries}: run {run.run_id} {run.status.value.lower()}"
    return Attempt("given_up", run_key, f"gave up on {run_key} after {retries + 1} failed runs; the last: {run.run_id}")


def with_attempt(request: dg.RunRequest, attempt: Attempt, reason_tag: str) -> dg.RunRequest:
    """The request under the attempt's run key; a retry says why in `reason_tag`."""
    if not attempt.is_retry:
        return request.with_replaced_attrs(run_key=attempt.run_key)
    return request.with_replaced_attrs(run_key=attempt.run_key, tags={**(request.tags or {}), reason_tag: attempt.why[:1000]})


@dataclass(frozen=True)
class FollowUp:
    """The work a sensor asked for, one tick later."""

    watching: dict[str, object]  # base run key -> what it covers: not finished yet, or asked for again now
    again: list[tuple[Attempt, object]]  # retries to ask for now, with what each covers
    given_up: list[Attempt]


def follow_up(
    instance: dg.DagsterInstance, job_name: str, asked: dict[str, object], retries: int = RETRIES, decided: Decided | None = None
) -> FollowUp:
    """For a sensor whose cursor marks work done when it asks for it: what it asked for (base run key -> what the
    run covers) sorted into still watched, asked for again, and given up; succeeded work drops out."""
    watching: dict[str, object] = {}
    again: list[tuple[Attempt, object]] = []
    given_up: list[Attempt] = []
    for key, what in asked.items():
        attempt = next_attempt(instance, job_name, key, retries, decided)
        if attempt.state == "given_up":
            given_up.append(attempt)
        elif attempt.state != "succeeded":
            watching[key] = what
            if attempt.is_retry:
                again.append((attempt, what))
    return FollowUp(watching, again, given_up)
