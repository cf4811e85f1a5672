"""The landing sensor: new or replaced files become ingestion runs of exactly their partitions.

A burst of files (a year of history landed at once) becomes one run per contiguous range of
partitions (the ingest assets' single-run backfill policy), split by `partitioning.partitions_per_run`
where declared; a single late file still runs at once, alone.

The cursor maps each landed file to the signature it was requested with, so a
file runs once; a corrected file landed again has a new signature and runs
again. Run keys (partition + signature) make a repeated request a no-op.
A range run that fails (one unreadable file fails the whole range) is asked for again one
partition per run, once: every other file of the burst is ingested, and the bad one fails alone,
naming its problem, until a corrected file is landed. Partitions the failed run featurized (it failed
because another day's features were held back) are not asked for again.
A late or replaced file runs with the partitions featurized before that its history reaches (the
`features.history_days` after it): their stored features were computed without it, while serving
reads the new history.
Partial files (hidden or temporary names) are never listed. When the pipeline
has reference tables, partitions wait until the reference asset has been
materialized from the reference files as they are now.
"""

import hashlib
import json
from typing import Any

import dagster as dg

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.names import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    FILE_TAG,
    REASON_TAG,
    RUN_KEY_TAG,
    TRIGGER_TAG,
    features_key,
    raw_key,
    reference_key,
    sensor_name,
)
from mlops_assets.core.partitions import partition_problem, runs_of, shift
from resources.landing_zone import LandingZoneResource, reference_signature
from sensors.cursors import read_cursor
from sensors.run_attempts import follow_up, next_attempt, with_attempt

# define_asset_job returns an unresolved job definition that dagster does not export by name
JobTarget = Any


def not_ingestible(decl: PipelineDeclaration, file_name: str) -> str | None:
    """Why a landed file is not a partition to ingest (None when it is). Never raises: one bad name must
    not stop the sensor, and with it every other file of the pipeline."""
    partition = decl.landing.partition_of(file_name)
    if partition is None:
        return f"its name does not match {decl.landing.file_pattern}"
    return partition_problem(decl, partition)


def _materialized_reference_signature(instance: dg.DagsterInstance, decl: PipelineDeclaration) -> str | None:
    event = instance.get_latest_materialization_event(reference_key(decl))
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get("source_signature")
    return None if value is None else str(value.value)


def _ingest_request(job_name: str, partitions: list[str], landed: dict[str, tuple[str, str]]) -> dg.RunRequest:
    """One run for one partition, or for a contiguous range of them (the ingest assets run a range in one run)."""
    if len(partitions) == 1:
        (name, signature) = landed[partitions[0]]
        return dg.RunRequest(
            run_key=f"{partitions[0]}:{signature}",
            job_name=job_name,
            partition_key=partitions[0],
            tags={TRIGGER_TAG: "landing_sensor", FILE_TAG: name},
        )
    signatures = hashlib.sha256("".join(f"{p}:{landed[p][1]};" for p in partitions).encode()).hexdigest()[:16]
    return dg.RunRequest(
        run_key=f"{partitions[0]}..{partitions[-1]}:{signatures}",
        job_name=job_name,
        tags={
            TRIGGER_TAG: "landing_sensor",
            FILE_TAG: f"{len(partitions)} files, {landed[partitions[0]][0]} .. {landed[partitions[-1]][0]}",
            ASSET_PARTITION_RANGE_START_TAG: partitions[0],
            ASSET_PARTITION_RANGE_END_TAG: partitions[-1],
        },
    )


def already_ingested(instance: dg.DagsterInstance, decl: PipelineDeclaration, landed_now: dict[str, tuple[str, str]]) -> set[str]:
    """Partitions whose raw partition was last ingested from this very file (the signature its event records),
    with features made after it. A cursor that never saw the files (a backfill launched headless with `dg
    launch`, a cursor started over) ingested the whole landing zone again, and every sensor downstream saw new
    data; lineage, not the cursor alone, says what is done. A replaced file, or a partition whose run stopped
    before its features, still runs."""
    candidates = set(landed_now) & instance.get_materialized_partitions(raw_key(decl)) if landed_now else set()
    if not candidates:  # the usual new day: one query
        return set()
    materialization = dg.DagsterEventType.ASSET_MATERIALIZATION
    raw_ids = instance.get_latest_storage_id_by_partition(raw_key(decl), materialization, partitions=candidates)
    featurized = instance.get_latest_storage_id_by_partition(features_key(decl), materialization, partitions=candidates)
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=raw_key(decl), storage_ids=list(raw_ids.values())), limit=len(raw_ids)
    ).records
    done = set()
    for record in records:
        event = record.asset_materialization
        signature = event.metadata.get("source_signature") if event is not None else None
        partition = record.partition_key
        if signature is not None and signature.value == landed_now[partition][1] and featurized.get(partition, -1) > record.storage_id:
            done.add(partition)
    return done


def history_followers(instance: dg.DagsterInstance, decl: PipelineDeclaration, landed_now: dict, present: dict) -> list[str]:
    """Partitions featurized before whose features a new or replaced earlier partition changes: those within
    `features.history_days` after it, whose history statistics include it. Run alone, a late file left their
    stored features computed without it, unequal to what serving (reading the new history) and an in-order
    backfill compute. Only featurized ones: a day whose file could not be read, or whose features were held
    back, has none to correct, and in the range it failed every day of it."""
    earlier = [key for key in present if key not in landed_now]
    if not decl.features.history_days or not earlier:
        return []
    latest = max(earlier)  # keys of one kind sort as their times
    followers: set[str] = set()
    for key in landed_now:
        after = key
        for _ in range(decl.features.history_days):
            after = shift(decl, after, 1)
            if after > latest:
                break
            if after in present and after not in landed_now:
                followers.add(after)
    if followers:  # a late file only: the usual new day at the end costs no query
        followers &= instance.get_materialized_partitions(features_key(decl))
    return sorted(followers)


def _ended_ranges(
    instance: dg.DagsterInstance, decl: PipelineDeclaration, job_name: str, ranges: dict[str, list[str]]
) -> tuple[dict[str, list[str]], list[str]]:
    """Of the range runs asked for, those still to watch (not launched, queued or running), and the partitions of
    those that failed or were canceled (asked for again one per run, not as a retry of the range), less those the
    failed run featurized: a range that failed only because a day's features were held back (over the validation
    limit) wrote every day, and asking for each of them again re-ingested the whole range one day per run."""
    followed = follow_up(instance, job_name, ranges, retries=0)
    failed = []
    for attempt in followed.given_up:
        runs = instance.get_runs(filters=dg.RunsFilter(job_name=job_name, tags={RUN_KEY_TAG: attempt.run_key}), limit=1)
        done = instance.get_asset_partitions_for_run(runs[0].run_id, dg.DagsterEventType.ASSET_MATERIALIZATION) if runs else {}
        featurized = done.get(features_key(decl), set())
        failed.extend(partition for partition in ranges[attempt.run_key] if partition not in featurized)
    return followed.watching, failed  # type: ignore[return-value]


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
        cursor = read_cursor(context)
        seen: dict[str, str] = cursor.get("files", {})
        if reference_job is not None:
            wanted = reference_signature(decl, landing)
            if wanted is None:
                return dg.SkipReason(f"waiting for the reference files of {decl.name} in {landing.uri(decl.name, 'reference')}")
            if _materialized_reference_signature(context.instance, decl) != wanted:
                # partitions wait for the reference tables: a failed reference run is asked for again (a few times)
                attempt = next_attempt(context.instance, reference_job.name, f"reference:{wanted}")
                if attempt.state == "given_up":
                    return dg.SkipReason(f"partitions wait for the reference tables: {attempt.why}; land corrected reference files")
                if attempt.state != "request":
                    return dg.SkipReason(f"partitions wait for the reference tables: {attempt.why}")
                tags = {TRIGGER_TAG: "landing_sensor", FILE_TAG: "reference"}
                request = dg.RunRequest(run_key=attempt.run_key, job_name=reference_job.name, tags=tags)
                return dg.SensorResult(run_requests=[with_attempt(request, attempt, REASON_TAG)], skip_reason=None)
        landed_now: dict[str, tuple[str, str]] = {}  # partition -> (file, signature) of new or replaced files
        present: dict[str, tuple[str, str]] = {}  # the same of every ingestible file there now
        ignored = set(cursor.get("ignored", []))
        for landed in landing.list_files(decl.name):
            problem = not_ingestible(decl, landed.name)
            if problem is not None:
                if landed.name not in ignored:  # reported once; every other file keeps flowing
                    context.log.warning(f"ignoring {landed.name}: {problem}")
                    ignored.add(landed.name)
                continue
            partition = decl.landing.partition_of(landed.name)
            present[partition] = (landed.name, landed.signature)  # type: ignore[index]
            if seen.get(landed.name) == landed.signature:
                continue
            landed_now[partition] = (landed.name, landed.signature)  # type: ignore[index]
            seen[landed.name] = landed.signature
        done = already_ingested(context.instance, decl, landed_now)
        if done:
            context.log.info(f"{len(done)} files not asked for again: their partitions were ingested from these very files")
            landed_now = {partition: landed for partition, landed in landed_now.items() if partition not in done}
        followers = history_followers(context.instance, decl, landed_now, present)
        if followers:
            context.log.info(f"{len(followers)} partitions ingested before run again: their history includes a late or replaced file")
        groups = runs_of(decl, [*landed_now, *followers])
        requests = [_ingest_request(ingest_job.name, group, present) for group in groups]
        watching, failed = _ended_ranges(context.instance, decl, ingest_job.name, cursor.get("ranges", {}))
        watching.update({request.run_key: group for request, group in zip(requests, groups) if len(group) > 1})
        for partition in failed:
            if partition in landed_now or partition not in present:
                continue  # landed again since (requested above), or gone
            context.log.info(f"a range run over {partition} failed: {present[partition][0]} is asked for in a run of its own")
            requests.append(_ingest_request(ingest_job.name, [partition], present))
        new_cursor = json.dumps({"files": seen, "ignored": sorted(ignored), "ranges": watching}, sort_keys=True)
        if not requests:
            return dg.SensorResult(skip_reason=dg.SkipReason("no new or replaced files"), cursor=new_cursor)
        return dg.SensorResult(run_requests=requests, cursor=new_cursor)

    return landing_sensor
