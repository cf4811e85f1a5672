"""`<pipeline>_rollout_sensor`: reads a rollout's live signals every few seconds and asks for the
rollout run when they call for a change (next step, promotion, or a rollback at once on a breach).

It keeps no state of its own: where the rollout stands is read from the audit log on every
tick, so a restarted daemon resumes a rollout where it was. While a step bakes, the tick's skip
reason shows the step, the share and the guard values so far (the Dagster UI lists them).

A run writes a step to the audit log before it changes Serve's share, so a run that failed in
between (Serve unreachable, say) leaves the step recorded and Serve at the share before it, and
the signals of the step would be judged on the wrong traffic. While that step bakes, the sensor
asks for an `apply` run, which puts the recorded share on Serve: up to RETRIES more times as
its run fails, then it says it gave up.
"""

from __future__ import annotations

import dagster as dg

from mlops_assets.core.declaration import PipelineDeclaration, RolloutSpec
from mlops_assets.core.names import (
    CHALLENGER,
    CHAMPION,
    PRIORITY,
    PRIORITY_TAG,
    REASON_TAG,
    ROLLOUT_ACTION_TAG,
    ROLLOUT_STEP_TAG,
    ROLLOUT_VERSION_TAG,
    rollout_job_name,
    rollout_key,
    sensor_name,
)
from resources import rollouts
from resources.audit_log import history
from resources.delta_lake import DeltaLakeResource
from resources.mlflow_registry import MlflowRegistryResource
from resources.registered_models import no_registry_yet, resolve_alias
from sensors.run_attempts import WILL_RETRY_TAG, next_attempt, with_attempt

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
    def rollout_sensor(context: dg.SensorEvaluationContext, delta: DeltaLakeResource, mlflow: MlflowRegistryResource):
        state = rollouts.current(history(delta, decl.name))
        if state is None:
            return dg.SkipReason(f"no rollout of {decl.name} in progress")
        job_name = rollout_job_name(decl)
        moved = _aliases_moved(mlflow, decl.name, state)
        if moved is not None:
            verdict = rollouts.Verdict("abort", moved)
        else:
            signals = rollouts.read_signals(delta, state, spec.guards, decl.target.task, decl.target.column)
            verdict = rollouts.decide(state, signals, spec)
        if verdict.action == "wait" and not _unapplied(context.instance, job_name, state, rollout_key(decl)):
            return dg.SkipReason(verdict.reason)
        pending = context.instance.get_run_records(filters=dg.RunsFilter(job_name=job_name, statuses=UNFINISHED), limit=1)
        if pending:
            return dg.SkipReason(f"{verdict.action} is due; rollout run {pending[0].dagster_run.run_id} has not finished yet")
        request = dg.RunRequest(
            tags={
                ROLLOUT_VERSION_TAG: str(state.version),
                ROLLOUT_STEP_TAG: str(state.step),
                ROLLOUT_ACTION_TAG: verdict.action if verdict.action != "wait" else APPLY,
                REASON_TAG: verdict.reason[:1000],
                PRIORITY_TAG: PRIORITY["rollout"],
            },
        )
        if verdict.action != "wait":
            return request
        attempt = next_attempt(context.instance, job_name, f"rollout:v{state.version}:step{state.step}:{APPLY}")
        if attempt.state == "given_up":
            return dg.SkipReason(
                f"{state.describe()} is recorded but Serve may still have the share before it: {attempt.why}; "
                f"materialize {decl.name}/rollout to apply it"
            )
        if attempt.state != "request":
            return dg.SkipReason(f"{verdict.reason} ({attempt.why})")
        return with_attempt(request, attempt, REASON_TAG)

    return rollout_sensor


APPLY = "apply"  # a run that puts the audit log's current share on Serve


def _aliases_moved(mlflow: MlflowRegistryResource, pipeline: str, state: rollouts.Rollout) -> str | None:
    """Why the rollout must end now, where an alias was moved by hand in MLflow: `challenger` no longer names its
    version (Serve, which follows the alias, gives it no traffic) or `champion` no longer names the version it is
    compared with; None while both do (or no registry yet). The run checks again under the promotion lease."""
    uri = mlflow.resolved_tracking_uri()
    if no_registry_yet(uri):
        return None
    return rollouts.moved_aliases(state, resolve_alias(uri, pipeline, CHALLENGER), resolve_alias(uri, pipeline, CHAMPION))


def _unapplied(instance: dg.DagsterInstance, job_name: str, state: rollouts.Rollout, asset: dg.AssetKey) -> bool:
    """Whether the latest rollout run of this version failed after recording the current step (or
    while applying it), so Serve may not have its share, and no materialization of the rollout asset
    since (one by hand, from the UI) applied it."""
    records = instance.get_run_records(filters=dg.RunsFilter(job_name=job_name, tags={ROLLOUT_VERSION_TAG: str(state.version)}), limit=1)
    if not records or records[0].dagster_run.status not in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
        return False
    since = instance.get_latest_materialization_event(asset)
    failed_at = records[0].end_time or records[0].update_timestamp.timestamp()
    if since is not None and since.timestamp > failed_at:
        return False
    tags = records[0].dagster_run.tags
    if tags.get(WILL_RETRY_TAG) == "true":
        return False  # Dagster's own run retry launches it again: that run judges and applies
    return tags.get(ROLLOUT_ACTION_TAG) == APPLY or int(tags.get(ROLLOUT_STEP_TAG, state.step)) < state.step
