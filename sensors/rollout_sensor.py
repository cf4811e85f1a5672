"""`<pipeline>_rollout_sensor`: reads a rollout's live signals every few seconds and asks for the
rollout run when they call for a change (next step, promotion, or a rollback at once on a breach).

It keeps no state of its own: where the rollout stands is read from the audit log on every
tick, so a restarted daemon resumes a rollout where it was. While a step bakes, the tick's skip
reason shows the step, the share and the guard values so far (the Dagster UI lists them).
"""

from __future__ import annotations

import dagster as dg

from mlops_assets.core.declaration import PipelineDeclaration, RolloutSpec
from mlops_assets.core.names import (
    PRIORITY,
    PRIORITY_TAG,
    REASON_TAG,
    ROLLOUT_ACTION_TAG,
    ROLLOUT_STEP_TAG,
    ROLLOUT_VERSION_TAG,
    rollout_job_name,
    sensor_name,
)
from resources import rollouts
from resources.audit_log import history
from resources.delta_lake import DeltaLakeResource

UNFINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def build_rollout_sensor(decl: PipelineDeclaration, spec: RolloutSpec, job) -> dg.SensorDefinition:
    @dg.sensor(
        name=sensor_name(decl, "rollout"),
        job=job,
        minimum_interval_seconds=spec.check_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Walks a new {decl.name} version through its rollout steps on live signals; rolls it back on a breach.",
    )
    def rollout_sensor(context: dg.SensorEvaluationContext, delta: DeltaLakeResource):
        state = rollouts.current(history(delta, decl.name))
        if state is None:
            return dg.SkipReason(f"no rollout of {decl.name} in progress")
        signals = rollouts.read_signals(delta, state, spec.guards, decl.target.task, decl.target.column)
        verdict = rollouts.decide(state, signals, spec)
        if verdict.action == "wait":
            return dg.SkipReason(verdict.reason)
        pending = context.instance.get_run_records(filters=dg.RunsFilter(job_name=rollout_job_name(decl), statuses=UNFINISHED), limit=1)
        if pending:
            return dg.SkipReason(f"{verdict.action} is due; rollout run {pending[0].dagster_run.run_id} has not finished yet")
        return dg.RunRequest(
            tags={
                ROLLOUT_VERSION_TAG: str(state.version),
                ROLLOUT_STEP_TAG: str(state.step),
                ROLLOUT_ACTION_TAG: verdict.action,
                REASON_TAG: verdict.reason[:1000],
                PRIORITY_TAG: PRIORITY["rollout"],
            },
        )

    return rollout_sensor
