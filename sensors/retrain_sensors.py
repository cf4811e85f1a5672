"""Sensors and the schedule that keep models fresh without a person.

- ``<pipeline>_monitor_sensor``: each feature partition that arrives after the
  champion's training window is checked for drift and batch-scored.
- ``<pipeline>_new_data_sensor``: enough new featurized days since the champion's
  window ended (or since the last request) -> training.
- ``<pipeline>_drift_sensor``: a drift report over its declared threshold
  (share of drifted columns, or a key column) -> training.
- ``<pipeline>_weekly_retrain``: the fallback schedule.

Retraining requests wait out a cooldown (the drift sensor's after the last
drift-triggered training that succeeded, the new-data sensor's after any that
succeeded) and are skipped while a training run is queued or running; a failed
drift, new-data or erasure retraining is asked for again (sensors/run_attempts.py); the cause is on the run's tags (``mlops/trigger``,
``mlops/reason``). Gates and the promotion policy then decide.
"""

import json
import time

import dagster as dg
import polars as pl

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.names import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    FEATURES,
    REASON_TAG,
    TRIGGER_TAG,
    WATERMARK,
    model_key,
    retrain_schedule_name,
    sensor_name,
    serving_drift_key,
)
from mlops_assets.core.partitions import runs_of
from resources import pipeline_tables, registered_models
from resources.delta_lake import DeltaLakeResource
from resources.mlflow_registry import MlflowRegistryResource
from resources.pipeline_tables import new_log_rows, settled_through_us
from sensors.cursors import read_cursor
from sensors.run_attempts import FollowUp, follow_up, next_attempt, with_attempt

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def training_in_flight(instance: dg.DagsterInstance, train_job: str) -> str | None:
    """Says so when a run of the pipeline's training job is queued or running, else None."""
    if instance.get_runs(filters=dg.RunsFilter(job_name=train_job, statuses=IN_FLIGHT), limit=1):
        return f"a {train_job} run is already queued or running"
    return None


def retrain_blocker(instance: dg.DagsterInstance, decl: PipelineDeclaration, train_job: str, trigger: str | None = None) -> str | None:
    """Why a retraining must not be requested now (a run in flight, or the cooldown), else None. `trigger`: the
    cooldown counts only trainings of that trigger (the drift sensor's own: counted from any training, the demo's
    first model held the walk-away's drift retraining back for half an hour)."""
    busy = training_in_flight(instance, train_job)
    if busy:
        return busy
    tags = {TRIGGER_TAG: trigger} if trigger else None
    # a training that failed is no retraining to cool down from: its request is asked for again (run_attempts)
    done = dg.RunsFilter(job_name=train_job, tags=tags, statuses=[dg.DagsterRunStatus.SUCCESS])
    records = instance.get_run_records(filters=done, limit=1)
    if records:
        age = time.time() - records[0].create_timestamp.timestamp()
        cooldown = decl.drift.cooldown_minutes * 60
        if age < cooldown:
            which = f"{trigger}-triggered {train_job}" if trigger else train_job
            return f"cooldown: the last {which} run started {age / 60:.1f} min ago (cooldown {decl.drift.cooldown_minutes} min)"
    return None


def _champion(decl: PipelineDeclaration, mlflow: MlflowRegistryResource) -> tuple[registered_models.Champion | None, str | None]:
    """The champion, or why there is none to work against: a `champion` alias moved by hand onto a version the
    platform did not train is said on every tick, not raised as a failed tick with a traceback."""
    try:
        return registered_models.champion(decl.name, mlflow), None
    except registered_models.UnplannedVersion as err:
        return None, str(err)


def gates_decided(instance: dg.DagsterInstance, decl: PipelineDeclaration):
    """For `follow_up`: a failed training that registered its version failed at its gates, a verdict. Asked for
    again, it trained the same model on the same window and registered it again, rejected each time."""
    key = model_key(decl)

    def decided(run: dg.DagsterRun) -> str | None:
        for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
            if entry.dagster_event is not None and entry.dagster_event.asset_key == key:
                return f"run {run.run_id} trained and registered a version that its gates rejected: not asked for again"
        return None

    return decided


def _retrain_request(train_job: str, run_key: str, trigger: str, reason: str) -> dg.RunRequest:
    return dg.RunRequest(run_key=run_key, job_name=train_job, tags={TRIGGER_TAG: trigger, REASON_TAG: reason[:1000]})


def follow_retrainings(
    context: dg.SensorEvaluationContext, decl: PipelineDeclaration, train_job: str, asked: dict, trigger_of, reason_of
) -> tuple[FollowUp, str | tuple[str, object, dg.RunRequest] | None]:
    """The retrainings a sensor asked for (base key -> what it covers), followed until they succeed or their gates
    decide, and the retry to ask for now: (base key, what it covers, request), a reason to wait, or None. One at
    most: each request supersedes the one before; an older cursor may hold more, and the newest is followed."""
    followed = follow_up(context.instance, train_job, asked, decided=gates_decided(context.instance, decl))
    for gave_up in followed.given_up:
        context.log.warning(f"retraining not done: {gave_up.why}")
    if not followed.again:
        return followed, None
    busy = training_in_flight(context.instance, train_job)
    if busy:
        return followed, f"a failed retraining waits to be asked for again: {busy}"
    attempt, covers = followed.again[-1]
    base = attempt.run_key.split("~retry-")[0]
    request = with_attempt(_retrain_request(train_job, base, trigger_of(base), reason_of(covers)), attempt, REASON_TAG)
    return followed, (base, covers, request)


def build_new_data_sensor(decl: PipelineDeclaration, train_job: str) -> dg.SensorDefinition:
    unit = decl.partitioning.unit
    first_model_needs = max(decl.drift.new_partitions_to_retrain, decl.training.validation_days + decl.gates.holdout_days + 1)

    @dg.sensor(
        name=sensor_name(decl, "new_data"),
        job_name=train_job,
        minimum_interval_seconds=10,  # part of the landing-to-served lead time
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Retrains {decl.name} when {decl.drift.new_partitions_to_retrain} new featurized {unit}s have arrived "
        "since the champion's training window ended, or when rows the champion trained on were erased (`mlops erase`).",
    )
    def new_data_sensor(context: dg.SensorEvaluationContext, delta: DeltaLakeResource, mlflow: MlflowRegistryResource):
        cursor = read_cursor(context)
        champ, unplanned = _champion(decl, mlflow)
        if unplanned:
            return dg.SkipReason(unplanned)
        # the retraining asked for against this champion (key -> [champion version, reason]), until it succeeds: a
        # failed one is asked for again (the cursor had moved past its days, so none was asked for until more landed)
        mine = champ.version if champ else 0
        asked = {k: what for k, what in cursor.get("asked", {}).items() if isinstance(what, list) and what[:1] == [mine]}
        if champ and champ.erased and cursor.get("erasure") != champ.erased:
            # the champion learned from rows that were erased: replace it now (no cooldown), once per erasure
            busy = training_in_flight(context.instance, train_job)
            if busy:
                return dg.SkipReason(busy)
            reason = f"champion v{champ.version} was trained on rows removed by erasure {champ.erased}"
            key = f"erasure:{champ.erased}"
            return dg.SensorResult(
                run_requests=[_retrain_request(train_job, key, "erasure", reason)],
                cursor=json.dumps({**cursor, "erasure": champ.erased, "asked": {key: [mine, reason]}}),
            )
        trigger_of = lambda base: "erasure" if base.startswith("erasure:") else "new_data"  # noqa: E731
        followed, retry = follow_retrainings(context, decl, train_job, asked, trigger_of, lambda what: what[1])
        cursor = {**cursor, "asked": followed.watching}
        if isinstance(retry, str):
            return dg.SkipReason(retry)
        if retry is not None:
            base, what, request = retry
            return dg.SensorResult(run_requests=[request], cursor=json.dumps({**cursor, "asked": {base: what}}))
        available = delta.partitions(decl.name, FEATURES)
        bases = [b for b in (champ.plan.partition_end if champ else None, cursor.get("requested_through")) if b]
        base = max(bases) if bases else None
        new = [p for p in available if base is None or p > base]
        needed = decl.drift.new_partitions_to_retrain if champ else first_model_needs
        if len(new) < needed:
            why = f"{len(new)} new featurized {unit}s since {base or 'the start'}; {needed} needed"
            return dg.SensorResult(skip_reason=dg.SkipReason(why), cursor=json.dumps(cursor))
        blocker = retrain_blocker(context.instance, decl, train_job)
        if blocker:
            return dg.SensorResult(skip_reason=dg.SkipReason(blocker), cursor=json.dumps(cursor))
        what = f"champion v{champ.version}'s window ended {champ.plan.partition_end}" if champ else "no champion yet"
        reason = f"{len(new)} new featurized {unit}s {new[0]}..{new[-1]} ({what})"
        key = f"new-data:{new[-1]}:v{mine}"
        return dg.SensorResult(
            run_requests=[_retrain_request(train_job, key, "new_data", reason)],
            cursor=json.dumps({**cursor, "requested_through": new[-1], "asked": {key: [mine, reason]}}),
        )

    return new_data_sensor


def build_drift_sensor(decl: PipelineDeclaration, train_job: str) -> dg.SensorDefinition:
    @dg.sensor(
        name=sensor_name(decl, "drift"),
        job_name=train_job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Retrains {decl.name} when a drift report passes its threshold "
        f"(share >= {decl.drift.share_threshold} or a key column: {', '.join(decl.drift.key_columns) or 'none'}).",
    )
    def drift_sensor(context: dg.SensorEvaluationContext, delta: DeltaLakeResource, mlflow: MlflowRegistryResource):
        cursor = read_cursor(context)
        champ, unplanned = _champion(decl, mlflow)
        if unplanned:
            return dg.SkipReason(unplanned)
        if champ is None:
            return dg.SkipReason("no champion yet")
        # the retrainings asked for against this champion, until one succeeds: a failed one is asked for again (the
        # walk-away's failed retraining was dropped, and with no day landing after it no alert asked again)
        asked = {k: why for k, why in cursor.get("asked", {}).items() if k.startswith(f"drift:v{champ.version}:")}
        followed, retry = follow_retrainings(context, decl, train_job, asked, lambda base: "drift", str)
        after = int(cursor.get("after_us", 0))
        if isinstance(retry, str):
            return dg.SkipReason(retry)
        if retry is not None:
            base, why, request = retry
            return dg.SensorResult(run_requests=[request], cursor=json.dumps({"after_us": after, "asked": {base: why}}))
        reports = pipeline_tables.drift_reports(delta, decl.name)
        fresh = reports.with_columns(pl.col("computed_at").dt.epoch("us").alias("_us")).filter(
            (pl.col("model_version") == champ.version) & (pl.col("_us") > after)
        )
        latest = int(fresh.get_column("_us").max()) if fresh.height else after
        alerts = fresh.filter(pl.col("alert"))
        if alerts.height == 0:
            return dg.SensorResult(
                skip_reason=dg.SkipReason(f"no new drift alert for champion v{champ.version}"),
                cursor=json.dumps({"after_us": latest, "asked": followed.watching}),
            )
        blocker = retrain_blocker(context.instance, decl, train_job, "drift")
        if blocker:
            return dg.SkipReason(f"drift alert waiting: {blocker}")
        last = alerts.tail(1).to_dicts()[0]
        reason = f"{last['source']} drift on {last['window']} against champion v{champ.version}: {last['alert_reason']}"
        key = f"drift:v{champ.version}:{last['source']}:{last['window']}"
        return dg.SensorResult(
            run_requests=[_retrain_request(train_job, key, "drift", reason)],
            cursor=json.dumps({"after_us": latest, "asked": {key: reason}}),  # the newest alert's retraining only
        )

    return drift_sensor


def _monitor_request(job_name: str, days: list[str], version: int) -> dg.RunRequest:
    """One run per contiguous range of new feature days (the monitoring assets run a range in one run);
    its run key is the range's and the version's."""
    tags = {TRIGGER_TAG: "monitor_sensor"}
    if len(days) == 1:
        return dg.RunRequest(run_key=f"monitor:{days[0]}:v{version}", job_name=job_name, partition_key=days[0], tags=tags)
    tags.update({ASSET_PARTITION_RANGE_START_TAG: days[0], ASSET_PARTITION_RANGE_END_TAG: days[-1]})
    return dg.RunRequest(run_key=f"monitor:{days[0]}..{days[-1]}:v{version}", job_name=job_name, tags=tags)


def build_monitor_sensor(decl: PipelineDeclaration, monitor_job: str, train_job: str) -> dg.SensorDefinition:
    unit = decl.partitioning.unit

    @dg.sensor(
        name=sensor_name(decl, "monitor"),
        job_name=monitor_job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Checks drift and batch-scores each {decl.name} feature {unit} that arrives after the champion's training window.",
    )
    def monitor_sensor(context: dg.SensorEvaluationContext, delta: DeltaLakeResource, mlflow: MlflowRegistryResource):
        champ, unplanned = _champion(decl, mlflow)
        if unplanned:
            return dg.SkipReason(unplanned)
        if champ is None:
            return dg.SkipReason("no champion yet")
        version = str(champ.version)
        cursor = read_cursor(context)
        done = set(cursor.get(version, []))  # days asked for against this champion
        # the runs asked for against this champion, until they succeed: a failed one is asked for again
        asked = cursor.get("asked", {}) if cursor.get("asked_for") == version else {}
        new = [p for p in delta.partitions(decl.name, FEATURES) if p > champ.plan.partition_end and p not in done]
        followed = follow_up(context.instance, monitor_job, asked)
        for gave_up in followed.given_up:
            context.log.warning(f"monitoring of {asked[gave_up.run_key]} not done: {gave_up.why}")
        # the runs it gave up on stay named in the skip message: it said the days were checked
        gave_up = (cursor.get("gave_up", {}) if cursor.get("asked_for") == version else {}) | {g.run_key: g.why for g in followed.given_up}
        kept = {version: sorted(done | set(new)), "asked_for": version, "asked": followed.watching, "gave_up": gave_up}
        if not new and not followed.again:
            why = f"no new feature {unit}s to check after champion v{champ.version}'s window ({champ.plan.partition_end}); {len(done)} asked for"
            if gave_up:
                why += f"; not done: {'; '.join(gave_up.values())}"
            return dg.SensorResult(skip_reason=dg.SkipReason(why), cursor=json.dumps(kept))
        busy = training_in_flight(context.instance, train_job)
        if busy:
            # the new day's training is the path to a fresher model; on a small machine the drift report
            # beside it slowed the training step 4x (`mlops bench leadtime`). The days are checked next tick.
            retrying = f" and {len(followed.again)} failed run(s) to ask for again" if followed.again else ""
            return dg.SkipReason(f"{len(new)} feature {unit}(s){retrying} wait for monitoring: {busy}")
        retries = [
            with_attempt(_monitor_request(monitor_job, days, champ.version), attempt, REASON_TAG) for attempt, days in followed.again
        ]
        groups = runs_of(decl, new)
        requests = [_monitor_request(monitor_job, days, champ.version) for days in groups]
        kept["asked"] |= {r.run_key: sorted({days[0], days[-1]}) for r, days in zip(requests, groups)}  # a range: its ends
        return dg.SensorResult(run_requests=retries + requests, cursor=json.dumps(kept))

    return monitor_sensor


def build_serving_drift_sensor(decl: PipelineDeclaration, job_name: str) -> dg.SensorDefinition:

    @dg.sensor(
        name=sensor_name(decl, "serving_drift"),
        job_name=job_name,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Checks logged serving traffic for drift and skew every {decl.drift.serving_window_rows} served predictions.",
    )
    def serving_drift_sensor(context: dg.SensorEvaluationContext, delta: DeltaLakeResource):
        after = last_watermark(context.instance, decl)
        rows = new_log_rows(delta, decl, after, settled_through_us(decl))
        count = 0 if rows is None else rows.select(pl.len()).collect().item()
        if count < decl.drift.serving_window_rows:
            return dg.SkipReason(f"{count} served predictions logged since the last check; {decl.drift.serving_window_rows} needed")
        # the watermark moves only when a check succeeds: a failed one is asked for again (sensors/run_attempts.py)
        attempt = next_attempt(context.instance, job_name, f"serving-drift:{after}")
        if attempt.state == "given_up":
            hint = f"materialize {serving_drift_key(decl).to_user_string()} once the cause is fixed (the watermark then moves)"
            return dg.SkipReason(f"{count} served predictions logged since the last check: {attempt.why}; {hint}")
        if attempt.state != "request":
            return dg.SkipReason(f"{count} served predictions logged since the last check: {attempt.why}")
        request = dg.RunRequest(run_key=attempt.run_key, job_name=job_name, tags={TRIGGER_TAG: "serving_drift_sensor"})
        return with_attempt(request, attempt, REASON_TAG)

    return serving_drift_sensor


def build_delivery_sensor(decl: PipelineDeclaration, job_name: str, watched: list[dg.AssetKey]) -> dg.SensorDefinition:
    @dg.sensor(
        name=sensor_name(decl, "delivery"),
        job_name=job_name,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Recomputes delivery metrics after each promotion decision or deployment.",
    )
    def delivery_sensor(context: dg.SensorEvaluationContext):
        latest = []
        for key in watched:
            page = context.instance.fetch_materializations(key, limit=1, ascending=False)
            latest.append(page.records[0].storage_id if page.records else 0)
        marker = ",".join(map(str, latest))
        if not any(latest) or marker == context.cursor:
            return dg.SkipReason("no new promotion decision or deployment")
        return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"delivery:{marker}", job_name=job_name)], cursor=marker)

    return delivery_sensor


def build_retrain_schedule(decl: PipelineDeclaration, train_job: str) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=retrain_schedule_name(decl),
        cron_schedule="0 3 * * 1",
        job_name=train_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Fallback: retrain weekly even when no sensor asked.",
    )
    def weekly_retrain(context: dg.ScheduleEvaluationContext, delta: DeltaLakeResource):
        if not delta.partitions(decl.name, FEATURES):
            return dg.SkipReason(f"no featurized {decl.partitioning.unit}s yet")
        return dg.RunRequest(tags={TRIGGER_TAG: "schedule", REASON_TAG: "weekly fallback retraining"})

    return weekly_retrain


def last_watermark(instance: dg.DagsterInstance, decl: PipelineDeclaration) -> int:
    event = instance.get_latest_materialization_event(serving_drift_key(decl))
    if event is None or event.asset_materialization is None:
        return 0
    value = event.asset_materialization.metadata.get(WATERMARK)
    return int(value.value) if value is not None else 0
