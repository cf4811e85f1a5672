"""Feature code of the small binary and multiclass test pipelines, plus their declarations and data.

The label depends on x1, x2 and the colour (with noise), so a model that
learns anything beats chance; days are generated from a seed per day, so
every run lands the same files.
"""

from __future__ import annotations

import io
from datetime import date, timedelta

import numpy as np
import polars as pl

from mlops_assets.core.declaration import PipelineDeclaration, parse_declaration
from mlops_assets.core.feature_contract import FeatureReference
from resources.landing_zone import LandingZoneResource

CATEGORICAL_FEATURES = ["color_code"]
COLORS = ["red", "green", "blue"]
CLASSES = {"binary": ["no", "yes"], "multiclass": ["setosa", "versicolor", "virginica"]}
START = date(2024, 3, 1)


def build_features(records: pl.DataFrame, reference: FeatureReference) -> pl.DataFrame:
    colors = reference.categories["color"]
    return records.select(
        pl.col("x1").alias("f_x1"),
        pl.col("x2").alias("f_x2"),
        (pl.col("x1") * pl.col("x2")).alias("f_x1_x2"),
        pl.col("color").replace_strict(colors, list(range(len(colors))), default=None, return_dtype=pl.Int16).alias("color_code"),
    )


def declaration(task: str, name: str | None = None, fmt: str = "csv") -> PipelineDeclaration:
    classes = CLASSES[task]
    return parse_declaration(
        {
            "name": name or f"{task}_demo",
            "landing": {"format": fmt, "file_pattern": "{partition}." + fmt},
            "partitioning": {"start": START.isoformat()},
            "schema": {
                "unique": ["day", "id"],
                "columns": {
                    "day": {"type": "date"},
                    "id": {"type": "int64", "min": 0},
                    "x1": {"type": "float64"},
                    "x2": {"type": "float64"},
                    "color": {"type": "str", "allowed": COLORS},
                    "label": {"type": "str", "allowed": classes, "nullable": True},
                },
            },
            "features": {"module": "tests.pipelines.classifier_features", "history_days": 0},
            "target": {"column": "label", "task": task, "missing_reason": "label not yet known"},
            "training": {
                "window_days": 6,
                "validation_days": 2,
                "min_rows": 200,
                "num_boost_round": 30,
                "early_stopping_rounds": 5,
                "params": {"learning_rate": 0.2, "num_leaves": 7, "min_data_in_leaf": 20},
            },
            "gates": {
                "floors": {"auc": 0.7} if task == "binary" else {"accuracy": 0.5},
                "holdout_days": 2,
            },
        },
        f"{task} (test)",
    )


def day_frame(task: str, day: date, rows: int = 300) -> pl.DataFrame:
    rng = np.random.default_rng(day.toordinal())
    x1, x2 = rng.normal(size=rows), rng.normal(size=rows)
    color = rng.integers(0, 3, size=rows)
    noise = rng.normal(scale=0.5, size=rows)
    if task == "binary":
        index = ((x1 + 0.5 * x2 + 0.8 * (color == 0) + noise) > 0.3).astype(int)
    else:
        scores = np.stack([x1, x2, -x1 - x2 + 0.8 * (color == 2)], axis=1) + rng.normal(scale=0.5, size=(rows, 3))
        index = scores.argmax(axis=1)
    labels = [CLASSES[task][i] for i in index]
    labels[0] = None  # one row per day whose label is not known yet
    return pl.DataFrame(
        {
            "day": [day] * rows,
            "id": np.arange(rows),
            "x1": x1,
            "x2": x2,
            "color": [COLORS[c] for c in color],
            "label": labels,
        }
    )


def land(decl: PipelineDeclaration, landing: LandingZoneResource, days: int) -> list[str]:
    keys = []
    for i in range(days):
        day = START + timedelta(days=i)
        buf = io.BytesIO()
        frame = day_frame(decl.target.task, day)
        frame.write_csv(buf) if decl.landing.format == "csv" else frame.write_parquet(buf)
        landing.write_bytes(decl.name, decl.landing.file_name(day.isoformat()), buf.getvalue())
        keys.append(day.isoformat())
    return keys
