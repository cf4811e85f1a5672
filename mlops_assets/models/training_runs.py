"""A pipeline's latest training run as Dagster recorded it, for `mlops status`.

A training that failed registers no version and writes no audit event, so the registry and `mlops history`
read as if nothing had been tried: the only trace was in Dagster's run history. This reads it from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.names import TRIGGER_TAG, model_key, train_job_name

_STATES = {
    dg.DagsterRunStatus.SUCCESS: "succeeded",
    dg.DagsterRunStatus.FAILURE: "failed",
    dg.DagsterRunStatus.CANCELED: "canceled",
    dg.DagsterRunStatus.CANCELING: "canceling",
    dg.DagsterRunStatus.QUEUED: "queued",
    dg.DagsterRunStatus.NOT_STARTED: "queued",
}
_REASON_CHARS = 300


@dataclass(frozen=True)
class TrainingRun:
    run_id: str
    state: str  # succeeded, failed, canceled, canceling, queued, running
    created: datetime
    trigger: str | None
    reason: str | None  # why it failed: the first failed step's message

    def describe(self) -> str:
        when = self.created.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
        by = f", {self.trigger}" if self.trigger else ""
        line = f"{self.state} (started {when}{by}; dagster run {self.run_id})"
        return f"{line}: {self.reason}" if self.reason else line


def last_training(instance: dg.DagsterInstance, decl: PipelineDeclaration) -> TrainingRun | None:
    """The newest run of the training job or any other run that set out to materialize the model (the UI's
    Materialize on `<pipeline>/model`, `dagster asset materialize`): those train and register versions too."""
    records = list(instance.get_run_records(filters=dg.RunsFilter(job_name=train_job_name(decl)), limit=1))
    planned = instance.get_latest_planned_materialization_info(model_key(decl))
    if planned is not None and not any(r.dagster_run.run_id == planned.run_id for r in records):
        other = instance.get_run_record_by_id(planned.run_id)
        if other is not None:
            records.append(other)
    if not records:
        return None
    record = max(records, key=lambda r: r.create_timestamp)
    run = record.dagster_run
    state = _STATES.get(run.status, "running")
    reason = failure_reason(instance, run.run_id) if state == "failed" else None
    return TrainingRun(run.run_id, state, record.create_timestamp, run.tags.get(TRIGGER_TAG), reason)


def failure_reason(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """The first failed step's message (a dg.Failure's description as written); else the run's own failure."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        data = entry.dagster_event.step_failure_data if entry.dagster_event else None
        if data is None:
            continue
        if data.user_failure_data is not None and data.user_failure_data.description:
            return _first_line(data.user_failure_data.description)
        if data.error is not None:
            error = data.error
            if error.cls_name == "DagsterExecutionStepExecutionError" and error.cause is not None:
                error = error.cause  # the step's own exception, under Dagster's "Error occurred while executing op"
            return _one_line(error.message)
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE):
        message = entry.dagster_event.message if entry.dagster_event else None
        if message:
            return _first_line(message)
    return None


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return _cut(line)


def _one_line(text: str) -> str:
    """An error message's lines as one: a failed gate's name is on the second line of Dagster's
    "1 blocking asset check failed with ERROR severity:"."""
    return _cut(" ".join(text.split()))


def _cut(line: str) -> str:
    return line if len(line) <= _REASON_CHARS else line[: _REASON_CHARS - 1] + "…"
