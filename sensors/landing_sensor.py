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


def _in_range(decl: PipelineDeclaration, partition: str) -> bool:
    d = date.fromisoformat(partition)
    end = decl.partitioning.end
    today = datetime.now(UTC).date()
    return decl.partitioning.start <= d < today and (end is None or d < end)


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
            partition = decl.landing.partition_of(landed.name)
            if partition is None or not _in_range(decl, partition):
                if landed.name not in ignored:
                    context.log.warning(f"ignoring {landed.name}: not a {decl.landing.file_pattern} file for a partition in range")
                    ignored.add(landed.name)
                continue
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
