"""Monitoring assets of a declared pipeline (lifecycle step 7).

- ``<pipeline>/feature_drift`` (daily): a new feature partition against the
  champion's training window (the reference recorded in its lineage): the fast
  per-column decision in ``drift_metrics`` and Evidently's HTML report.
- ``<pipeline>/batch_scores`` (daily): the champion's predictions for the day,
  with the model version on every row.
- ``<pipeline>/live_performance``: once the labels of scored days are known,
  the live metric per model version and day.
"""

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import dagster as dg
import polars as pl

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.metrics import live_metrics
from mlops_assets.core.names import (
    BATCH_SCORES,
    DRIFT_REPORTS_ARTIFACT,
    FEATURES,
    LIVE_PERFORMANCE,
    PARTITION_COLUMN,
    SOURCE_ROW,
    batch_scores_key,
    feature_drift_key,
    features_key,
    live_performance_key,
    model_key,
)
from mlops_assets.core.partitions import backfill_policy
from mlops_assets.metadata import add_partition_metadata, preview
from mlops_assets.monitoring import batch_scoring, drift_metrics
from mlops_assets.monitoring.drift import DriftResult, detect
from mlops_assets.monitoring.drift_report import evidently_drift
from resources import audit_log, registered_models, rollouts
from resources.delta_lake import DeltaLakeResource
from resources.mlflow_registry import MlflowRegistryResource
from resources.registered_models import get_version


def _require_champion(decl: PipelineDeclaration, mlflow: MlflowRegistryResource) -> registered_models.Champion:
    try:
        champ = registered_models.champion(decl.name, mlflow)
    except registered_models.UnplannedVersion as err:
        raise dg.Failure(str(err), allow_retries=False) from None
    if champ is None:
        raise dg.Failure(
            f"{decl.name} has no champion model yet: drift and scores are measured against the champion",
            allow_retries=False,
        )
    return champ


def _features(delta: DeltaLakeResource, decl: PipelineDeclaration, partition: str) -> pl.DataFrame:
    frame = delta.read_partitions(decl.name, FEATURES, [partition])
    if frame is None or frame.height == 0:
        raise dg.Failure(f"no features for partition {partition}: ingest it first", allow_retries=False)
    return frame


@dataclass(frozen=True)
class HtmlReport:
    artifact: str  # runs:/<run id>/drift_reports/<name>.html: the one copy, on the model version's MLflow run
    url: str  # that copy's page in the MLflow UI


class HtmlReports:
    """Evidently's HTML reports of one model version's drift checks in one run, on bounded samples (none when the
    declaration switches them off). Its training window is read once and its MLflow run looked up once, not per
    report (a range run writes one report per partition). Each report is logged on that run and kept nowhere else
    (about 5 MB a report): a browser opens no file:// link from the Dagster UI's page ("Not allowed to load local
    resource"), and on a cluster a file would be on the run's pod, so the link a person follows is the MLflow UI's
    page of the logged copy."""

    def __init__(
        self, decl: PipelineDeclaration, delta: DeltaLakeResource, mlflow: MlflowRegistryResource, model: registered_models.Champion
    ):
        self.decl, self.delta, self.mlflow, self.model = decl, delta, mlflow, model

    @cached_property
    def _reference(self) -> pl.DataFrame:
        return drift_metrics.reference_window(self.delta, self.model)

    @cached_property
    def _run(self) -> tuple[str, str]:
        """The version's MLflow run: (experiment id, run id)."""
        client = self.mlflow.client()
        run_id = get_version(client, self.decl.name, self.model.version).run_id
        return client.get_run(run_id).info.experiment_id, run_id

    def render(self, current: pl.DataFrame, name: str) -> HtmlReport | None:
        if not self.decl.drift.html_report:
            return None
        experiment_id, run_id = self._run
        with tempfile.TemporaryDirectory(prefix="drift_report_") as folder:
            path = Path(folder) / f"{name}.html"
            evidently_drift(
                self._reference,
                current,
                self.model.numerical,
                self.model.categorical,
                html_path=path,
                sample_rows=self.decl.drift.report_sample_rows,
                drift_share=self.decl.drift.share_threshold,  # the headline Evidently prints: the platform's threshold, not its 0.5
            )
            with self.mlflow.writing() as writer:
                writer.log_artifact(run_id, str(path), artifact_path=DRIFT_REPORTS_ARTIFACT)
        logged = f"{DRIFT_REPORTS_ARTIFACT}/{path.name}"
        return HtmlReport(f"runs:/{run_id}/{logged}", self.mlflow.artifact_url(experiment_id, run_id, logged))


def _partition_figures(partition: str, current: pl.DataFrame, result: DriftResult, reason: str, html: HtmlReport | None) -> dict:
    """A partition's own drift figures: its event's metadata, in a range run as in a run of that partition alone."""
    figures = {
        "partition": partition,
        "rows": current.height,
        "drift_share": result.share,
        "drifted_columns": ", ".join(result.drifted()) or "none",
        "alert": bool(reason),
        "alert_reason": reason or "none",
    }
    return figures | ({"report_url": dg.MetadataValue.url(html.url)} if html else {})


def build_monitoring_assets(decl: PipelineDeclaration, partitions: dg.PartitionsDefinition) -> list:
    target = decl.target.column

    @dg.asset(
        key=feature_drift_key(decl),
        deps=[features_key(decl), model_key(decl)],
        partitions_def=partitions,
        backfill_policy=backfill_policy(decl),
        group_name=decl.name,
        kinds={"evidently", "delta"},
        description=f"Drift of the {decl.partitioning.unit}'s features against the champion's training window: per-column scores "
        f"in {decl.name}/drift_metrics and Evidently's HTML report.",
    )
    def feature_drift(context: dg.AssetExecutionContext, delta: DeltaLakeResource, mlflow: MlflowRegistryResource):
        champ = _require_champion(decl, mlflow)
        try:
            reference = drift_metrics.reference_profile(delta, champ, context.run.run_id)
        except drift_metrics.EmptyReference as err:
            raise dg.Failure(str(err), allow_retries=False) from None
        days, reports = [], HtmlReports(decl, delta, mlflow, champ)
        for partition in sorted(context.partition_keys):  # one day, or a range in one run: a report per day
            current = _features(delta, decl, partition)
            result = detect(reference, current, decl.drift.share_threshold)
            html = reports.render(current, f"feature_drift_{partition}_v{champ.version}")
            written = drift_metrics.record(
                delta,
                decl.name,
                result,
                source="features",
                window=partition,
                model_version=champ.version,
                rows=current.height,
                key_columns=drift_metrics.checked_key_columns(decl.drift.key_columns, reference),
                run_id=context.run.run_id,
                html_report=html.artifact if html else "",
            )
            days.append((partition, current, result, written.get_column("alert_reason")[0], html))
        if len(days) > 1:
            add_partition_metadata(context, feature_drift_key(decl), {d[0]: _partition_figures(*d) for d in days})
            summary = pl.DataFrame(
                [{"partition": p, "rows": c.height, "drift_share": r.share, "alert": reason or ""} for p, c, r, reason, _ in days]
            )
            alerts = [p for p, _, _, reason, _ in days if reason]
            return dg.MaterializeResult(
                metadata={
                    "partitions": len(days),
                    "range": f"{days[0][0]} .. {days[-1][0]}",
                    "champion_version": champ.version,
                    "range_rows": sum(c.height for _, c, _, _, _ in days),
                    "alert_partitions": ", ".join(alerts) or "none",
                    "days": preview(summary, rows=summary.height),
                }
            )
        partition, current, result, reason, html = days[0]
        metadata = {
            **_partition_figures(partition, current, result, reason, html),
            "champion_version": champ.version,
            "reference_window": drift_metrics.describe_reference(champ),  # after an erasure: not the recorded version
            "share_threshold": decl.drift.share_threshold,
            "columns": preview(result.columns.sort("drifted", "score", descending=True), rows=result.columns.height, max_columns=5),
        }
        return dg.MaterializeResult(metadata=metadata)

    @dg.asset(
        key=batch_scores_key(decl),
        deps=[features_key(decl), model_key(decl)],
        partitions_def=partitions,
        backfill_policy=backfill_policy(decl),
        group_name=decl.name,
        kinds={"lightgbm", "delta"},
        description=f"The champion's predictions for each {decl.partitioning.unit}, with the model version on every row; during a "
        "rollout also the new version's, so its live metric is compared with the champion's on the same rows.",
    )
    def batch_scores(context: dg.AssetExecutionContext, delta: DeltaLakeResource, mlflow: MlflowRegistryResource):
        champ = _require_champion(decl, mlflow)
        days = sorted(context.partition_keys)
        try:
            job = batch_scoring.scoring_job(decl, delta, days)
        except batch_scoring.MissingFeatures as e:
            raise dg.Failure(f"{e}: ingest it first", allow_retries=False) from e
        spec = decl.batch_scoring

        def score(model: registered_models.Champion) -> dict[str, pl.DataFrame]:
            booster = registered_models.load_booster(mlflow, decl.name, model.version)  # once for the whole range
            if spec.engine == "ray":
                return batch_scoring.score_on_ray(booster, model, job, days, delta, spec.ray_workers, spec.num_cpus)
            return batch_scoring.score_locally(booster, model, job, days, delta)

        scored_at = pl.lit(datetime.now(UTC)).cast(pl.Datetime("us", "UTC")).alias("scored_at")
        scored_days = {p: f.with_columns(scored_at) for p, f in score(champ).items()}
        written = dict(scored_days)
        rollout = rollouts.current(audit_log.history(delta, decl.name))
        if rollout is not None and rollout.version != champ.version:  # its live-metric guard reads these rows
            candidate = registered_models.model_version(decl.name, mlflow, rollout.version)
            for p, f in score(candidate).items():
                written[p] = pl.concat([written[p], f.with_columns(scored_at)], how="diagonal_relaxed")
        version = delta.write_partitions(decl.name, BATCH_SCORES, {p: f.drop(target) for p, f in written.items()}, context.run.run_id)
        scored = pl.concat(list(scored_days.values()))
        where = {"partition": next(iter(scored_days))} if len(scored_days) == 1 else {"partitions": len(scored_days)}
        metadata = {
            **where,
            "rows": scored.height,
            "model_version": champ.version,
            "delta_version": version,
            "features_version": job.version,
            "engine": spec.engine if spec.engine == "local" else f"ray ({spec.ray_workers} workers)",
        }
        labelled = scored.filter(pl.col(target).is_not_null())
        if labelled.height:
            metadata.update(
                {
                    f"live_{k}": v
                    for k, v in live_metrics(
                        champ.plan.task, labelled.get_column(target).to_numpy(), labelled["prediction"].to_numpy()
                    ).items()
                }
            )
        return dg.MaterializeResult(metadata=metadata)

    @dg.asset(
        key=live_performance_key(decl),
        deps=[batch_scores_key(decl), features_key(decl)],
        group_name=decl.name,
        kinds={"delta"},
        description=f"The live metric per model version and {decl.partitioning.unit} (its `day` column), from batch scores joined with the labels that arrived.",
    )
    def live_performance(context: dg.AssetExecutionContext, delta: DeltaLakeResource):
        scored = delta.scan(decl.name, BATCH_SCORES)
        labels = delta.scan(decl.name, FEATURES)
        if scored is None or labels is None:
            raise dg.Failure("no batch scores yet: materialize batch_scores for some days first", allow_retries=False)
        joined = (
            scored.join(labels.select(PARTITION_COLUMN, SOURCE_ROW, target), on=[PARTITION_COLUMN, SOURCE_ROW], how="inner")
            .filter(pl.col(target).is_not_null())
            .collect()
        )
        rows = []
        for (version, day), group in joined.group_by("model_version", PARTITION_COLUMN):
            metrics = live_metrics(decl.target.task, group.get_column(target).to_numpy(), group["prediction"].to_numpy())
            rows.append({"model_version": version, "day": day, "rows": group.height, **metrics})
        table = (
            pl.DataFrame(rows).sort("day", "model_version")
            if rows
            else pl.DataFrame(schema={"model_version": pl.Int64, "day": pl.String, "rows": pl.Int64})
        )
        version = delta.overwrite(decl.name, LIVE_PERFORMANCE, table, context.run.run_id)
        latest = table.tail(1).to_dicts()[0] if table.height else {}
        return dg.MaterializeResult(
            metadata={
                "days": table.get_column("day").n_unique(),  # not rows: during a rollout two versions score each day
                "delta_version": version,
                "by_version_and_day": preview(table.tail(30), rows=30),
                **{f"latest_{n}": float(latest[n]) for n in ("mae", "rmse", "accuracy") if n in latest},
            }
        )

    return [feature_drift, batch_scores, live_performance]
