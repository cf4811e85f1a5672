"""The Evidently drift reports an erasure removes. A report holds rows of the sample it was rendered from (each
column's minimum and maximum, its categories with their counts, the mean and spread of 150 bins of rows in
order: every row's values in a report of up to 150 rows), so one rendered from an erased row keeps that row's
values after every table has lost it. Their one copy is on a model version's MLflow run, named in
drift_metrics.html_report; the erasure deletes it there and marks the rows, which keep their scores."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from mlops_assets.core.names import DRIFT_METRICS, DRIFT_REPORTS_ARTIFACT
from mlops_assets.monitoring.serving_drift import appended_bounds
from resources.delta_lake import DeltaLakeResource
from resources.mlflow_registry import MlflowRegistryResource
from resources.registered_models import get_version

ERASED_PREFIX = "erased by erasure "  # drift_metrics.html_report of a report an erasure removed


def rendered_from(delta: DeltaLakeResource, pipeline: str, partitions: list[str], log_rows: pl.DataFrame) -> pl.DataFrame:
    """The drift reports (report_id, model_version, html_report) rendered from rows being erased: the feature
    reports of the partitions that held them, and each serving report whose range of append times held an erased
    served row of its version (`log_rows`: model_version, appended_us). Read from the windows, whose bounds are
    whole seconds: a report of the check beside an erased row's second may go too, none that held one stays."""
    metrics = delta.scan(pipeline, DRIFT_METRICS)
    if metrics is None:
        return pl.DataFrame(schema={"report_id": pl.String, "model_version": pl.Int64, "html_report": pl.String})
    reports = (
        metrics.filter((pl.col("html_report") != "") & ~pl.col("html_report").str.starts_with(ERASED_PREFIX))
        .group_by("report_id")
        .agg(pl.col("source", "window", "model_version", "html_report").first())
        .collect()
    )
    features = reports.filter((pl.col("source") == "features") & pl.col("window").is_in(partitions))
    appended: dict[int, list[int]] = {}
    for version, us in log_rows.select("model_version", "appended_us").iter_rows():
        appended.setdefault(version, []).append(us)
    held = []
    for report_id, version, window in (
        reports.filter(pl.col("source") == "serving").select("report_id", "model_version", "window").iter_rows()
    ):
        if version in appended:
            lo, hi = appended_bounds(window)
            if any(lo <= us < hi for us in appended[version]):
                held.append(report_id)
    serving = reports.filter(pl.col("report_id").is_in(held))
    return pl.concat([features, serving]).select("report_id", "model_version", "html_report").sort("report_id")


def remove(
    delta: DeltaLakeResource, mlflow: MlflowRegistryResource, pipeline: str, reports: pl.DataFrame, erasure_id: str, run_id: str, why: str
) -> None:
    """Delete each report's copy (one already gone is no error: a re-run completes an interrupted erasure), then mark
    its drift_metrics rows with the erasure, in one commit."""
    if reports.height == 0:
        return
    runs: dict[int, str] = {}
    for version, artifact in reports.select("model_version", "html_report").iter_rows():
        if artifact.startswith("runs:/"):
            run, _, path = artifact.removeprefix("runs:/").partition("/")
            mlflow.delete_artifact(run, path)
            continue
        # written before the reports were kept on the run only: a file under $MLOPS_HOME/reports, and the same
        # report logged on the version's run
        if version not in runs:
            runs[version] = get_version(mlflow.client(), pipeline, version).run_id
        mlflow.delete_artifact(runs[version], f"{DRIFT_REPORTS_ARTIFACT}/{Path(artifact).name}")
        Path(artifact).unlink(missing_ok=True)
    ids = ", ".join(f"'{r}'" for r in reports.get_column("report_id"))
    delta.update(pipeline, DRIFT_METRICS, {"html_report": ERASED_PREFIX + erasure_id}, f"report_id IN ({ids})", run_id, why)
