"""`<pipeline>_model_card_sensor`: a version's card is written once its gates have judged it and again
when its story changes (promotion, approval, rollback, erasure, new drift reports)."""

from __future__ import annotations

import hashlib
import json

import dagster as dg
import polars as pl

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.names import ERASED_TAG, GATES_TAG, REASON_TAG, STATUS_TAG, sensor_name
from resources.audit_log import history
from resources.delta_lake import DeltaLakeResource
from resources.mlflow_registry import MlflowRegistryResource
from resources.pipeline_tables import drift_reports
from resources.registered_models import no_registry_yet
from sensors.cursors import read_cursor
from sensors.run_attempts import follow_up, with_attempt


def story(mv, audit: pl.DataFrame, drift: pl.DataFrame) -> str:
    """What the card of a version depends on, hashed: the card is rewritten when this changes."""
    version = int(mv.version)
    parts = {
        "tags": {k: v for k, v in sorted(mv.tags.items()) if k in (STATUS_TAG, GATES_TAG, ERASED_TAG) or k.startswith("gate.")},
        "aliases": sorted(mv.aliases),
        "audit": audit.filter((pl.col("model_version") == version) | (pl.col("from_version") == version)).height,
        "drift": drift.filter(pl.col("model_version") == version).height,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


ASKED = "asked"  # the cursor's record of card runs asked for (the other keys are versions)


def build_model_card_sensor(decl: PipelineDeclaration, job, versions: dg.DynamicPartitionsDefinition) -> dg.SensorDefinition:
    @dg.sensor(
        name=sensor_name(decl, "model_card"),
        job=job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Writes the model card of each {decl.name} version once its gates have judged it, and when its story changes.",
    )
    def model_card_sensor(context: dg.SensorEvaluationContext, delta: DeltaLakeResource, mlflow: MlflowRegistryResource):
        missing = no_registry_yet(mlflow.resolved_tracking_uri())
        if missing:
            return dg.SkipReason(missing)
        registered = [mv for mv in mlflow.client().search_model_versions(f"name='{decl.name}'") if mv.tags.get(GATES_TAG)]
        if not registered:
            return dg.SkipReason(f"no {decl.name} version has been through its gates yet")
        before = read_cursor(context)
        asked = before.pop(ASKED, {})  # card runs asked for, until they succeed: a failed one is asked for again
        audit, drift = history(delta, decl.name), drift_reports(delta, decl.name)
        now = {str(mv.version): story(mv, audit, drift) for mv in registered}
        changed = sorted((v for v, s in now.items() if before.get(v) != s), key=int)
        followed = follow_up(context.instance, job.name, asked)
        for gave_up in followed.given_up:
            context.log.warning(f"the model card of v{asked[gave_up.run_key]} was not written: {gave_up.why}")
        # a retry is for the story it was asked with: a version whose story changed since gets a fresh request
        retries = [(attempt, v) for attempt, v in followed.again if v not in changed]
        requests = [with_attempt(dg.RunRequest(partition_key=v), attempt, REASON_TAG) for attempt, v in retries]
        requests += [dg.RunRequest(run_key=f"card-{v}-{now[v]}", partition_key=v) for v in changed]
        watching = {key: v for key, v in followed.watching.items() if v not in changed} | {f"card-{v}-{now[v]}": v for v in changed}
        cursor = json.dumps({**before, **now, ASKED: watching})
        if not requests:
            return dg.SensorResult(skip_reason=dg.SkipReason(f"the cards of {len(now)} versions are current"), cursor=cursor)
        known = set(context.instance.get_dynamic_partitions(versions.name))
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[versions.build_add_request([v for v in changed if v not in known])],
            cursor=cursor,
        )

    return model_card_sensor
