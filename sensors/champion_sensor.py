"""`<pipeline>_champion_sensor`: requests the rollout whenever the `champion` or
`challenger` alias moves (promotion, rollback, new challenger) or a progressive rollout starts
or ends (the audit log's), and again, a few times, when the rollout for the current aliases failed.

A rollout can start without an alias move: a version waiting for approval (policy manual) already
holds `challenger`, at no share of traffic, and its approval starts the rollout. Only a deployment
puts the first step's share on Serve, so without one the new version got no traffic and the rollout
waited for its answers for ever."""

from __future__ import annotations

import json

import dagster as dg

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.names import (
    CHALLENGER,
    CHALLENGER_VERSION_TAG,
    CHAMPION,
    CHAMPION_VERSION_TAG,
    REASON_TAG,
    deploy_job_name,
    sensor_name,
)
from resources import rollouts
from resources.audit_log import history
from resources.registered_models import no_registry_yet, resolve_alias
from resources.serving import ServingResource
from sensors.cursors import read_cursor

ROLLOUT_RETRIES = 3


def _retry_failed_rollout(context: dg.SensorEvaluationContext, decl: PipelineDeclaration, state: dict) -> dg.RunRequest | None:
    """Request the rollout again when the last one for these aliases failed (Ray busy, a replica that
    would not start): otherwise serving keeps the old champion until the next alias move.
    At most ROLLOUT_RETRIES times per move; the failed runs stay visible in the run history."""
    moves, retries = int(state.get("moves", 0)), int(state.get("retries", 0))
    if retries >= ROLLOUT_RETRIES:
        return None
    records = context.instance.get_run_records(
        filters=dg.RunsFilter(job_name=deploy_job_name(decl), tags={CHAMPION_VERSION_TAG: str(state["champion"])}), limit=1
    )
    if not records or records[0].dagster_run.status not in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
        return None
    failed = records[0].dagster_run
    context.update_cursor(json.dumps({**state, "retries": retries + 1}))
    return dg.RunRequest(
        run_key=f"{decl.name}-aliases-{moves}-retry-{retries + 1}",
        tags={
            **{k: v for k, v in failed.tags.items() if k.startswith("mlops/")},
            REASON_TAG: f"retry {retries + 1} of {ROLLOUT_RETRIES}: rollout run {failed.run_id} {failed.status.value.lower()}",
        },
    )


def _named(version: int | None, prefix: str = "v") -> str:
    """A version as the run's tags and reason show it: `v3`, or `none` (Python's `None` read as a version name)."""
    return "none" if version is None else f"{prefix}{version}"


def build_champion_sensor(decl: PipelineDeclaration, job) -> dg.SensorDefinition:
    @dg.sensor(
        name=sensor_name(decl, "champion"),
        job=job,
        minimum_interval_seconds=10,  # a new champion waits at most this long for its rollout
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Redeploys {decl.name} when its `champion` or `challenger` alias moves, or a rollout starts or ends.",
    )
    def champion_sensor(context: dg.SensorEvaluationContext, serving: ServingResource):
        uri = serving.settings(decl.name).resolved_tracking_uri()
        missing = no_registry_yet(uri)
        if missing:
            return dg.SkipReason(missing)
        now = {"champion": resolve_alias(uri, decl.name, CHAMPION), "challenger": resolve_alias(uri, decl.name, CHALLENGER)}
        if now["champion"] is None:
            return dg.SkipReason(f"model {decl.name} has no champion yet")
        if decl.promotion.rollout is not None:
            rolling_out = rollouts.current(history(serving.settings(decl.name).delta(), decl.name))
            now["rolling_out"] = rolling_out.version if rolling_out is not None else None
        before = read_cursor(context)
        if all(before.get(k) == v for k, v in now.items()):
            return _retry_failed_rollout(context, decl, before) or dg.SkipReason(f"aliases unchanged (champion v{now['champion']})")
        # counted on from the rollouts already asked for too: a cursor started over would ask again under the
        # run key of the first move, which Dagster drops as launched (the new champion would never be rolled out)
        asked = context.instance.get_runs_count(filters=dg.RunsFilter(job_name=deploy_job_name(decl)))
        moves = max(int(before.get("moves", 0)), asked) + 1
        context.update_cursor(json.dumps({**now, "moves": moves}))
        return dg.RunRequest(
            run_key=f"{decl.name}-aliases-{moves}",
            tags={
                CHAMPION_VERSION_TAG: str(now["champion"]),
                CHALLENGER_VERSION_TAG: _named(now["challenger"], ""),
                REASON_TAG: f"champion {_named(before.get('champion'))} -> {_named(now['champion'])}, "
                f"challenger {_named(before.get('challenger'))} -> {_named(now['challenger'])}"
                + (
                    f", rollout {_named(before.get('rolling_out'))} -> {_named(now['rolling_out'])}"
                    if before.get("rolling_out") != now.get("rolling_out")
                    else ""
                ),
            },
        )

    return champion_sensor
