"""``<pipeline>/serving_drift``: what the model actually saw in production.

Each materialization takes the prediction-log rows appended since the previous
one, up to `drift.serving_settle_seconds` ago (served traffic; shadow rows are the challenger's and are left out) and,
per model version that answered them, compares the logged features with that version's
exact training snapshot: training-serving skew, reported per column like feature drift, into
``drift_metrics`` (source ``serving``). A version with fewer than `drift.serving_min_rows` rows
in the window (a canary's share) is judged on its newest that many, from the windows before
too; one that has not served that many yet is named as not judged: on a few dozen rows every
column reads as drifted.
"""

import re
from datetime import UTC, datetime

import dagster as dg
import polars as pl

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.names import WATERMARK, serving_drift_key
from mlops_assets.metadata import preview
from mlops_assets.monitoring import drift_metrics
from mlops_assets.monitoring.assets import HtmlReports
from mlops_assets.monitoring.drift import detect
from resources import registered_models
from resources.delta_lake import DeltaLakeResource
from resources.mlflow_registry import MlflowRegistryResource
from resources.pipeline_tables import new_log_rows, newest_log_rows, settled_through_us
from sensors.retrain_sensors import last_watermark

STAMP = "%Y-%m-%dT%H:%M:%S"  # a window's bounds, to the second
_WINDOW = re.compile(r"log (?P<after>[0-9T:-]+)\.\.(?P<through>[0-9T:-]+)(?P<earlier>, with earlier rows: its newest \d+)?")


def log_window(after_us: int, through_us: int) -> str:
    """A check's `window` in drift_metrics: the append times it read, after `after_us` and up to `through_us`."""
    return f"log {datetime.fromtimestamp(after_us / 1e6, UTC):{STAMP}}..{datetime.fromtimestamp(through_us / 1e6, UTC):{STAMP}}"


def with_earlier_rows(window: str, rows: int) -> str:
    """The window of a version judged on its newest `rows` rows, from the checks before too."""
    return f"{window}, with earlier rows: its newest {rows}"


def appended_bounds(window: str) -> tuple[int, int]:
    """The append times (µs since the epoch, from inclusive, to exclusive) a check's rows can have, read back from
    its window: widened to the window's whole seconds (a row appended in the second one check ended may be counted
    for the next one too), and from the log's start when the version was judged with earlier rows."""
    m = _WINDOW.fullmatch(window)
    if m is None:
        raise ValueError(f"{window!r} is not a serving drift window (log <after>..<through>)")
    after, through = (int(datetime.strptime(m[k], STAMP).replace(tzinfo=UTC).timestamp()) * 1_000_000 for k in ("after", "through"))
    return (0 if m["earlier"] else after), through + 1_000_000


def build_serving_drift_asset(decl: PipelineDeclaration, deployment_key: dg.AssetKey) -> dg.AssetsDefinition:
    @dg.asset(
        key=serving_drift_key(decl),
        deps=[deployment_key],
        group_name=decl.name,
        kinds={"evidently", "delta"},
        description="Logged serving features since the last check against the training snapshot of the version "
        f"that served them (training-serving skew), per column, into drift_metrics; a version with fewer than "
        f"{decl.drift.serving_min_rows} rows in the window is judged on its newest {decl.drift.serving_min_rows} (from earlier "
        "windows too), and not judged before it has served that many.",
    )
    def serving_drift(context: dg.AssetExecutionContext, delta: DeltaLakeResource, mlflow: MlflowRegistryResource):
        after, through = last_watermark(context.instance, decl), settled_through_us(decl)
        rows = new_log_rows(delta, decl, after, through)
        logged = rows.collect() if rows is not None else pl.DataFrame()
        if logged.height == 0:
            raise dg.Failure(
                f"no served predictions appended to the log since {datetime.fromtimestamp(after / 1e6, UTC).isoformat()} "
                f"(up to {decl.drift.serving_settle_seconds} s ago): nothing to compare",
                allow_retries=False,
            )
        # the watermark is the settled point, not the newest row read: every row appended up to it has been read
        window = log_window(after, through)
        summary, alerts, unjudged, reports = [], [], [], {}
        least = decl.drift.serving_min_rows
        for (version,), served in logged.sort("model_version").group_by("model_version", maintain_order=True):
            span = window
            if served.height < least:  # a canary's few rows: any drift they show is sampling noise, not the traffic
                served = newest_log_rows(delta, decl, int(version), through, least)  # with what it served before
                span = with_earlier_rows(window, least)
            if served.height < least:
                verdict = f"not enough rows ({served.height} of {least})"
                unjudged.append(f"v{version}: {verdict}")
                summary.append({"model_version": int(version), "rows": served.height, "drift_share": None, "drifted": verdict})
                continue
            model = registered_models.model_version(decl.name, mlflow, int(version))
            try:
                reference = drift_metrics.reference_profile(delta, model, context.run.run_id)
            except drift_metrics.EmptyReference as err:
                raise dg.Failure(str(err), allow_retries=False) from None
            result = detect(reference, served, decl.drift.share_threshold)
            html = reports[int(version)] = HtmlReports(decl, delta, mlflow, model).render(served, f"serving_drift_{through}_v{version}")
            written = drift_metrics.record(
                delta,
                decl.name,
                result,
                source="serving",
                window=span,
                model_version=int(version),
                rows=served.height,
                key_columns=drift_metrics.checked_key_columns(decl.drift.key_columns, reference),
                run_id=context.run.run_id,
                html_report=html.artifact if html else "",
            )
            reason = written.get_column("alert_reason")[0]
            if reason:
                alerts.append(f"v{version}: {reason}")
            summary.append(
                {
                    "model_version": int(version),
                    "rows": served.height,
                    "drift_share": result.share,
                    "drifted": ", ".join(result.drifted()) or "none",
                }
            )
        judged = [s["drift_share"] for s in summary if s["drift_share"] is not None]
        metadata = {
            WATERMARK: through,
            "window": window,
            "rows": logged.height,
            "by_version": preview(pl.DataFrame(summary), rows=len(summary)),
            **({"max_drift_share": max(judged)} if judged else {}),
            "alert": bool(alerts),
            "alert_reason": "; ".join(alerts) or "none",
            "not_judged": "; ".join(unjudged) or "none",
        }
        for version, html in reports.items():  # one Evidently report per version judged, against its own window
            if html:
                metadata[f"report_url_v{version}"] = dg.MetadataValue.url(html.url)
        return dg.MaterializeResult(metadata=metadata)

    return serving_drift
