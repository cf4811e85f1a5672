"""The landing sensor: new or replaced files become ingestion runs of exactly their partitions.

The cursor maps each landed file to the signature it was requested with, so a
file runs once; a corrected file landed again has a new signature and runs
again. Run keys (partition + signature) make a repeated request a no-op.
Partial files (hidden or temporary names) are never listed. When the pipeline
has reference tables, partitions wait until the reference asset has been
materialized from the reference files as they are now.
"""

import json
from datetime import UTC, date, datetime
from typing import Any

import dagster as dg

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.names import FILE_TAG, TRIGGER_TAG, reference_key, sensor_name
from resources.landing_zone import LandingZoneResource, reference_signature

# define_asset_job returns an unresolved job definition that dagster does not export by name
JobTarget = Any


def not_ingestible(decl: PipelineDeclaration, file_name: str) -> str | None:
    """Why a landed file is not a partition to ingest (None when it is). Never raises: one bad name must
    not stop the sensor, and with it every other file of the pipeline."""
    partition = decl.landing.partition_of(file_name)
    if partition is None:
        return f"its name does not match {decl.landing.file_pattern}"
    try:
        d = date.fromisoformat(partition)
    except ValueError:
        return f"{partition} is not a date"
    end = decl.partitioning.end
    if d < decl.partitioning.start or (end is not None and d >= end):
        return f"{partition} is outside the declared partitions ({decl.partitioning.start} .. {end or 'open'})"
    if d >= datetime.now(UTC).date():
        return f"{partition} has not ended yet"
    return None


def _materialized_reference_signature(instance: dg.DagsterInstance, decl: PipelineDeclaration) -> str | None:
    event = instance.get_latest_materialization_event(reference_key(decl))
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get("source_signature")
    return None if value is None else str(value.value)


def build_landing_sensor(decl: PipelineDeclaration, ingest_job: JobTarget, reference_job: JobTarget | None) -> dg.SensorDefinition:
    jobs = [ingest_job] + ([reference_job] if reference_job is not None else [])

    @dg.sensor(
        name=sensor_name(decl, "landing"),
        jobs=jobs,
        minimum_interval_seconds=5,  # a landed file waits at most this long for its run
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Starts ingestion of each new or replaced file in the {decl.name} landing zone.",
    )
    def landing_sensor(context: dg.SensorEvaluationContext, landing: LandingZoneResource):
        cursor = json.loads(context.cursor) if context.cursor else {}
        seen: dict[str, str] = cursor.get("files", {})
        if reference_job is not None:
            wanted = reference_signature(decl, landing)
            if wanted is None:
                return dg.SkipReason(f"waiting for the reference files of {decl.name} in {landing.uri(decl.name, 'reference')}")
            if _materialized_reference_signature(context.instance, decl) != wanted:
                return dg.SensorResult(
                    run_requests=[
                        dg.RunRequest(
                            run_key=f"reference:{wanted}",
                            job_name=reference_job.name,
                            tags={TRIGGER_TAG: "landing_sensor", FILE_TAG: "reference"},
                        )
                    ],
                    skip_reason=None,
                )
        requests = []
        ignored = set(cursor.get("ignored", []))
        for landed in landing.list_files(decl.name):
            problem = not_ingestible(decl, landed.name)
            if problem is not None:
                if landed.name not in ignored:  # reported once; every other file keeps flowing
                    context.log.warning(f"ignoring {landed.name}: {problem}")
                    ignored.add(landed.name)
                continue
            partition = decl.landing.partition_of(landed.name)
            if seen.get(landed.name) == landed.signature:
                continue
            requests.append(
                dg.RunRequest(
                    run_key=f"{partition}:{landed.signature}",
                    job_name=ingest_job.name,
                    partition_key=partition,
                    tags={TRIGGER_TAG: "landing_sensor", FILE_TAG: landed.name},
                )
            )
            seen[landed.name] = landed.signature
        new_cursor = json.dumps({"files": seen, "ignored": sorted(ignored)}, sort_keys=True)
        if not requests:
            return dg.SensorResult(skip_reason=dg.SkipReason("no new or replaced files"), cursor=new_cursor)
        return dg.SensorResult(run_requests=requests, cursor=new_cursor)

    return landing_sensor
