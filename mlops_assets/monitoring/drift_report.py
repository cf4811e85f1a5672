"""Evidently's DataDriftPreset report: the HTML a person opens, and its per-column verdicts.

Evidently is imported here only, lazily (its import alone takes about 10 s), and
is given a bounded sample: the platform's decision comes from drift.detect.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

REPORT_SAMPLE_ROWS = 50_000


def evidently_drift(
    reference: pl.DataFrame,
    current: pl.DataFrame,
    numerical: list[str],
    categorical: list[str],
    html_path: Path | None = None,
    sample_rows: int | None = REPORT_SAMPLE_ROWS,
    seed: int = 0,
    drift_share: float = 0.5,
) -> pl.DataFrame:
    """Run Evidently's drift preset; returns column, method, score, threshold, drifted. ``drift_share`` is the
    share of drifted columns at which the report's headline says the dataset drifted: pass the declaration's
    ``drift.share_threshold``, or the report a person opens contradicts the platform's decision."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    # Evidently refuses a column with no values on either side; drift.detect skips those too
    empty = {c for c in numerical + categorical for f in (reference, current) if f.get_column(c).drop_nulls().len() == 0}
    numerical = [c for c in numerical if c not in empty]
    categorical = [c for c in categorical if c not in empty]
    columns = numerical + categorical

    def prepare(frame: pl.DataFrame):
        frame = frame.select(columns)
        if sample_rows is not None and frame.height > sample_rows:
            frame = frame.sample(sample_rows, seed=seed)
        return frame.with_columns(pl.col(categorical).cast(pl.String)).to_pandas()

    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    snapshot = Report([DataDriftPreset(drift_share=drift_share)]).run(
        Dataset.from_pandas(prepare(current), data_definition=definition),
        Dataset.from_pandas(prepare(reference), data_definition=definition),
    )
    if html_path is not None:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(html_path))
    rows = []
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if not config.get("type", "").endswith("ValueDrift"):
            continue
        method, threshold, score = config["method"], float(config["threshold"]), float(metric["value"])
        drifted = score < threshold if "p_value" in method else score >= threshold
        rows.append((config["column"], method, score, threshold, drifted))
    return pl.DataFrame(
        rows,
        schema={"column": pl.String, "method": pl.String, "score": pl.Float64, "threshold": pl.Float64, "drifted": pl.Boolean},
        orient="row",
    )
