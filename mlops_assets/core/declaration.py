"""The model pipeline declaration: one YAML file per pipeline.

The platform builds every asset, check, job and sensor of a pipeline from this
declaration, so adding a second model needs a second file and no platform code.
It is validated when loaded; errors name the file and the bad field.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import polars as pl
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mlops_assets.core.metrics import ALL_METRIC_NAMES, METRICS, RATE_METRICS
from mlops_assets.core.names import GATEWAY_APP, derived_names

# the package's own defs folder (a Dagster Components defs folder): one folder per pipeline, each
# with a defs.yaml whose component type is MLPIPELINE_TYPE and whose attributes are the declaration
PACKAGED_PIPELINES = Path(__file__).resolve().parent.parent / "defs"
MLPIPELINE_TYPE = "mlops_assets.components.MlPipeline"

POLARS_TYPES: dict[str, pl.DataType] = {
    "int8": pl.Int8(),
    "int16": pl.Int16(),
    "int32": pl.Int32(),
    "int64": pl.Int64(),
    "float32": pl.Float32(),
    "float64": pl.Float64(),
    "str": pl.String(),
    "bool": pl.Boolean(),
    "date": pl.Date(),
    "datetime": pl.Datetime("us", "UTC"),
}
ColumnType = Literal["int8", "int16", "int32", "int64", "float32", "float64", "str", "bool", "date", "datetime"]
Identifier = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]


class DeclarationError(ValueError):
    """A pipeline declaration that cannot be used; the message names the file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSpec(_Strict):
    type: ColumnType
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    allowed: list[str] | list[int] | list[float] | None = None
    description: str = ""

    @property
    def dtype(self) -> pl.DataType:
        return POLARS_TYPES[self.type]

    @model_validator(mode="after")
    def _bounds(self) -> "ColumnSpec":
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if (self.min is not None or self.max is not None) and self.type in ("str", "bool", "date", "datetime"):
            raise ValueError(f"min/max do not apply to a {self.type} column")  # a number against a date passed every row
        if self.allowed is not None:
            if len(self.allowed) == 0:
                raise ValueError("allowed must list at least one value")
            if self.type in ("bool", "date", "datetime"):
                raise ValueError(f"allowed does not apply to a {self.type} column")
            # ["0", "1"] for an int column (a YAML quoting slip) loaded, then failed every ingest
            wanted = str if self.type == "str" else int if self.type.startswith("int") else (int, float)
            wrong = [v for v in self.allowed if not isinstance(v, wanted) or isinstance(v, bool)]
            if wrong:
                kind = "text" if self.type == "str" else "whole numbers" if self.type.startswith("int") else "numbers"
                raise ValueError(f"allowed values of a {self.type} column must be {kind}, not {wrong[:3]}")
        return self


FILE_EXTENSIONS = {"parquet": ".parquet", "csv": ".csv"}  # a landing format's file name ending


class LandingSpec(_Strict):
    """What lands. Where is the deployment's: ``<landing resource root>/<pipeline>``, by default
    ``$MLOPS_HOME/landing/<pipeline>`` (MLOPS_LANDING_URI or the resource's ``root`` elsewhere)."""

    format: Literal["parquet", "csv"]
    file_pattern: str = "{partition}.parquet"
    reference_tables: dict[Identifier, str] = Field(
        default_factory=dict,
        description="Reference tables (name -> file name in the landing zone's reference/ folder).",
    )

    @model_validator(mode="before")
    @classmethod
    def _pattern_of_the_format(cls, data: Any) -> Any:
        """Without a file_pattern, files are named for the format: `{partition}.csv` for CSV."""
        if isinstance(data, dict) and "uri" in data:  # it was accepted once and never read: the folder watched was another
            raise ValueError(
                "landing.uri is not a declaration setting: files land in <landing root>/<pipeline>, the root set per "
                "deployment (the landing resource's root, MLOPS_LANDING_URI; default $MLOPS_HOME/landing)"
            )
        if isinstance(data, dict) and "file_pattern" not in data and data.get("format") in FILE_EXTENSIONS:
            return {**data, "file_pattern": "{partition}" + FILE_EXTENSIONS[data["format"]]}
        return data

    @model_validator(mode="after")
    def _pattern(self) -> "LandingSpec":
        if self.file_pattern.count("{partition}") != 1:
            raise ValueError("file_pattern must contain '{partition}' exactly once")
        if "/" in self.file_pattern:
            raise ValueError("file_pattern is a file name, not a path")
        for fmt, extension in FILE_EXTENSIONS.items():
            if fmt != self.format and self.file_pattern.lower().endswith(extension):
                raise ValueError(f"file_pattern {self.file_pattern!r} names {extension} files, but format is {self.format}")
        for name, file_name in self.reference_tables.items():
            if "/" in file_name or "\\" in file_name or file_name.startswith("."):
                raise ValueError(f"reference_tables.{name}: {file_name!r} is a file name in the reference/ folder, not a path")
            if not file_name.endswith(tuple(FILE_EXTENSIONS.values())):
                raise ValueError(f"reference_tables.{name}: {file_name!r} must end in .csv or .parquet (it says how it is read)")
        return self

    @staticmethod
    def reference_format(file_name: str) -> str:
        """How a reference table's file is read and written: by its ending (.csv or .parquet, checked at load)."""
        return "csv" if file_name.endswith(FILE_EXTENSIONS["csv"]) else "parquet"

    def partition_of(self, file_name: str) -> str | None:
        """The partition key a landed file name stands for, or None for other files."""
        prefix, suffix = self.file_pattern.split("{partition}")
        # ASCII digits only: `\d` also matches other scripts' digits, which strptime reads and Dagster does not
        m = re.fullmatch(re.escape(prefix) + r"([0-9]{4}-[0-9]{2}-[0-9]{2}(?:-[0-9]{2}:[0-9]{2})?)" + re.escape(suffix), file_name)
        return m.group(1) if m else None

    def file_name(self, partition: str) -> str:
        return self.file_pattern.replace("{partition}", partition)


class PartitioningSpec(_Strict):
    kind: Literal["hourly", "daily", "weekly", "monthly"] = Field(
        "daily", description="Dagster time-window partitions; the *_days windows count partitions of this kind."
    )
    start: date
    end: date | None = Field(default=None, description="Exclusive end; open-ended when omitted.")
    partitions_per_run: int | None = Field(
        default=None, ge=1, description="A backfill splits into runs of this many partitions; unset: one run for any range."
    )
    time_column: Identifier | list[Identifier] | None = Field(
        default=None,
        description="What places a row in time: a date or datetime column, or [year, month, day] integer columns. "
        "Rows of a file whose time is outside the file's partition are quarantined.",
    )

    @property
    def unit(self) -> str:
        """What one partition is called in messages and descriptions: those of an hourly pipeline said "4 new featurized
        days" of four hours."""
        return {"hourly": "hour", "daily": "day", "weekly": "week", "monthly": "month"}[self.kind]

    @model_validator(mode="after")
    def _range(self) -> "PartitioningSpec":
        if self.end is not None and self.end <= self.start:
            raise ValueError("end must be after start")
        if self.end is not None and self.kind in ("weekly", "monthly"):
            # Dagster still lists the first period when it runs past `end`, while every landed file of it is refused as
            # outside the declared partitions: a pipeline that could ingest nothing
            if self.kind == "weekly":
                first = self.start + timedelta(days=(6 - self.start.weekday()) % 7)  # the first Sunday
                ends = first + timedelta(weeks=1)
            else:
                first = self.start if self.start.day == 1 else _next_month(self.start)
                ends = _next_month(first)
            if ends > self.end:
                raise ValueError(
                    f"no whole {self.kind} partition between start and end: the first, {first}, ends {ends} (end is exclusive)"
                )
        return self


def _next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


class SchemaSpec(_Strict):
    columns: dict[Identifier, ColumnSpec]
    unique: list[str] = Field(default_factory=list, description="Columns that together identify a row.")
    extra_columns: Literal["fail", "drop"] = "fail"

    @model_validator(mode="after")
    def _known(self) -> "SchemaSpec":
        if not self.columns:
            raise ValueError("columns must declare at least one column")
        unknown = [c for c in self.unique if c not in self.columns]
        if unknown:
            raise ValueError(f"unique names columns that are not declared: {unknown}")
        return self


class ValidationSpec(_Strict):
    max_failure_rate: float = Field(0.05, ge=0.0, le=1.0)


class LookupSpec(_Strict):
    """One join the platform performs before build_features: records matched on `keys` against a table,
    bringing in `columns` (a list, or table column -> output name). Batch runs do it as a polars left
    join, serving replicas as hash-index probes built once per loaded version: the same frame either way."""

    table: Identifier = Field(description="A landing.reference_tables name, or a table the module's history statistics return.")
    keys: list[Identifier] = Field(min_length=1, description="Record columns matched, by the same names, in the table.")
    columns: list[Identifier] | dict[Identifier, Identifier] = Field(
        min_length=1, description="Table columns brought in; a mapping renames them (table column -> output name)."
    )

    @property
    def outputs(self) -> dict[str, str]:
        """Table column -> the column it becomes in the records."""
        return dict(self.columns) if isinstance(self.columns, dict) else {c: c for c in self.columns}


HOURS_OF_A_YEAR = 366 * 24  # history_days of an hourly pipeline: a cap of 366 partitions held its history to 15 days


class FeaturesSpec(_Strict):
    module: str = Field(pattern=r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
    history_days: int = Field(
        28,
        ge=0,
        le=HOURS_OF_A_YEAR,
        description="Partitions of the declared kind before each one that its history statistics read (hours of an hourly "
        "pipeline: at most a year's; at most 366 of the other kinds).",
    )
    lookups: list[LookupSpec] = Field(
        default_factory=list, description="Joins the platform performs, in order; build_features then only transforms rows."
    )


class TargetSpec(_Strict):
    column: str
    task: Literal["regression", "binary", "multiclass"]
    classes: list[str] | list[int] | None = None
    missing_reason: str = "target is missing"


class TrainingSpec(_Strict):
    window_days: int = Field(60, ge=2)
    validation_days: int = Field(7, ge=1)
    min_rows: int = Field(200, ge=1)
    num_boost_round: int = Field(300, ge=1)
    early_stopping_rounds: int = Field(30, ge=1)
    params: dict[str, Any] = Field(default_factory=dict)
    seed: int = 42
    num_threads: int = Field(2, ge=1, le=256, description="Fixed thread count: LightGBM is deterministic only with one.")
    engine: Literal["local", "ray"] = Field("local", description="Where LightGBM trains: in the Dagster step or on Ray Train workers.")
    ray_workers: int = Field(2, ge=1, le=1024, description="Ray Train workers when engine is ray (each reads its share of the days).")

    @model_validator(mode="after")
    def _split(self) -> "TrainingSpec":
        if self.validation_days >= self.window_days:
            raise ValueError("validation_days must be smaller than window_days")
        fixed = sorted({"seed", "deterministic", "num_threads", "objective", "num_class"} & set(self.params))
        if fixed:
            raise ValueError(f"params must not set {fixed}: the platform sets them (use training.seed / num_threads)")
        return self


class BatchScoringSpec(_Strict):
    """Where `batch_scores` predicts a range of days: in the Dagster step, or on Ray Data workers
    (each loads the champion once and scores whole days it reads itself)."""

    engine: Literal["local", "ray"] = Field("local", description="local: in the Dagster step; ray: Ray Data over the days.")
    ray_workers: int = Field(2, ge=1, le=1024, description="Ray Data scoring workers when engine is ray (a model each).")
    num_cpus: float = Field(1.0, gt=0, description="CPUs each Ray scoring worker reserves.")


class FairnessSpec(_Strict):
    """A blocking gate on how the model treats groups: the hold-out `metric` per value of each
    `groups` column; the largest relative gap between groups, (max - min) / max, must be at most `max_gap`."""

    groups: list[str] = Field(min_length=1, description="Declared columns whose values are the groups (e.g. origin).")
    metric: str = Field(description="A metric of the task, or for binary models positive_rate / tpr.")
    max_gap: float = Field(gt=0.0, le=1.0)
    min_group_rows: int = Field(30, ge=1, description="Groups with fewer hold-out rows are reported, not gated.")


class GatesSpec(_Strict):
    floors: dict[str, float] = Field(default_factory=dict, description="metric -> bound (direction from the metric)")
    max_regression: float = Field(0.02, ge=0.0, description="Allowed relative loss against the champion.")
    holdout_days: int = Field(7, ge=1)
    compare_metrics: list[str] = Field(
        default_factory=list, description="Metrics compared with the champion; empty means the task's primary metric."
    )
    fairness: FairnessSpec | None = None

    @field_validator("floors", "compare_metrics")
    @classmethod
    def _known_metrics(cls, value):
        """Names are checked against every task here and against the pipeline's task when it is built."""
        unknown = sorted(n for n in value if n not in ALL_METRIC_NAMES)
        if unknown:
            raise ValueError(f"unknown metric names {unknown}; known: {', '.join(sorted(ALL_METRIC_NAMES))}")
        return value


class RolloutGuardsSpec(_Strict):
    """What rolls a rollout back: the new version against the current champion on the same live traffic."""

    max_error_rate_increase: float = Field(
        0.01, ge=0.0, le=1.0, description="Share of the new version's requests that failed, above the champion's share."
    )
    min_error_requests: int = Field(20, ge=1, description="Requests of the new version before its error rate is judged.")
    max_p99_latency_ratio: float = Field(2.0, ge=1.0, description="The new version's p99 latency over the champion's.")
    max_prediction_shift: float = Field(
        0.2, gt=0.0, le=1.0, description="Kolmogorov-Smirnov distance between the two versions' predictions."
    )
    max_live_metric_regression: float = Field(
        0.05, ge=0.0, description="Relative loss of the live metric against the champion's, on the same labelled rows."
    )
    # two samples of 200 from one distribution exceed a KS distance of 0.2 with probability under 0.1%
    min_rows: int = Field(200, ge=1, description="Answers per side before latency and prediction shift are judged.")


class RolloutSpec(_Strict):
    """A progressive rollout: the new version earns its traffic share step by step."""

    steps: list[float] = Field(min_length=1, description="Canary shares, increasing, ending at 1.0.")
    bake_minutes: float = Field(10.0, ge=0.0, description="Time each step lasts before the next.")
    min_requests: int = Field(200, ge=0, description="Requests the new version must answer in a step before the next.")
    check_seconds: int = Field(15, ge=1, description="How often the rollout sensor reads the live signals.")
    guards: RolloutGuardsSpec = RolloutGuardsSpec()

    @field_validator("steps")
    @classmethod
    def _increasing_to_one(cls, steps: list[float]) -> list[float]:
        if any(not 0.0 < s <= 1.0 for s in steps):
            raise ValueError(f"every step is a share in (0, 1], got {steps}")
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"steps must increase, got {steps}")
        if steps[-1] != 1.0:
            raise ValueError(f"the last step must be 1.0 (all traffic), got {steps[-1]}")
        return steps


class PromotionSpec(_Strict):
    policy: Literal["auto", "manual"] = "auto"
    rollout: RolloutSpec | None = Field(
        None, description="Progressive rollout after the gates (and approval); none: the alias moves at once."
    )


class DriftSpec(_Strict):
    """When monitoring asks for retraining. A column drifts when its test (chosen as
    Evidently's DataDriftPreset chooses) says so; see mlops_assets/drift.py."""

    share_threshold: float = Field(0.3, ge=0.0, le=1.0, description="Share of drifted feature columns that triggers retraining.")
    key_columns: list[str] = Field(default_factory=list, description="Feature columns whose drift alone triggers retraining.")
    new_partitions_to_retrain: int = Field(7, ge=1)
    cooldown_minutes: int = Field(60, ge=0)
    html_report: bool = Field(True, description="Render Evidently's HTML report for each drift check.")
    report_sample_rows: int = Field(5000, ge=100, description="Rows per side given to Evidently's HTML report.")
    serving_window_rows: int = Field(1000, ge=1, description="Logged predictions that make a serving drift window.")
    serving_min_rows: int = Field(
        500,
        ge=1,
        description="Logged rows a model version is judged on by serving drift: with fewer in a window (a canary's share) "
        "its newest this many are judged, earlier windows' too; a version that has served fewer is not judged (too few "
        "to tell drift from sampling noise) and raises no alert.",
    )
    serving_settle_seconds: int = Field(
        30,
        ge=0,
        le=3600,
        description="How long after its append a logged row is read by serving drift: rows appended in the last seconds may "
        "still be committing, and a check that read past them would never read them.",
    )

    @model_validator(mode="after")
    def _judgeable_window(self) -> "DriftSpec":
        if self.serving_min_rows > self.serving_window_rows:
            raise ValueError(
                f"serving_min_rows ({self.serving_min_rows}) is above serving_window_rows ({self.serving_window_rows}): "
                "a version that answered a whole window would not be judged"
            )
        return self


class ReplicaGroupSpec(_Strict):
    """One group of model replicas; min/max_replicas (both set) switch on Serve autoscaling."""

    replicas: int = Field(2, ge=0)
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    min_replicas: int | None = Field(None, ge=0)
    max_replicas: int | None = Field(None, ge=1)
    max_surge_percent: int = Field(100, ge=0, le=100, description="Extra replicas started before old ones stop on a restart.")
    max_ongoing_requests: int = Field(16, ge=1)
    batch_threads: int = Field(
        0,
        ge=0,
        description="LightGBM threads for a request of 1,000 rows or more (smaller ones use one); 0: every core the replica's "
        "process may run on. Ray sets a replica's OpenMP threads to its CPU share, one for half a core.",
    )
    health_check_period_s: float = Field(
        1.0, gt=0, le=60, description="How often Serve checks each replica: a replica that died is replaced within about this."
    )

    @model_validator(mode="after")
    def _bounds(self) -> "ReplicaGroupSpec":
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("set both min_replicas and max_replicas (autoscaling) or neither")
        if self.min_replicas is not None and self.min_replicas > self.max_replicas:  # type: ignore[operator]
            raise ValueError("min_replicas is greater than max_replicas")
        return self


class TrafficSpec(_Strict):
    """Initial traffic to the `challenger`; changed at run time without restarting replicas."""

    canary_share: float = Field(0.0, ge=0.0, le=1.0, description="Share of requests answered by the challenger.")
    shadow: bool = Field(False, description="Mirror every request to the challenger; log its predictions only.")
    shadow_max_in_flight: int = Field(
        64, ge=1, description="Mirrored requests a replica keeps in flight; more are dropped and counted (shadow_dropped)."
    )


class ServingSpec(_Strict):
    cpu: ReplicaGroupSpec = ReplicaGroupSpec()
    gpu: ReplicaGroupSpec | None = None
    challenger: ReplicaGroupSpec = ReplicaGroupSpec(replicas=1, num_cpus=0.25)
    traffic: TrafficSpec = TrafficSpec()
    v1_route: ReplicaGroupSpec | None = Field(
        ReplicaGroupSpec(replicas=2, num_cpus=0.25),
        description="Champion replicas of V1 predict's own (/v1/models/<name>:predict), reached straight from the ingress as "
        "V2 infer's are: about 1.3 ms less a request than the gateway's hand-off (`mlops bench serving`), for one more "
        "replica group's memory and idle CPU. "
        "null: V1 goes through the gateway to the V2 replicas.",
    )
    max_batch_rows: int = Field(10_000, ge=1)
    compiled_trees: bool = Field(
        False,
        description="Predict large requests with the forest compiled to a shared library (tl2cgen; pip install -e '.[compiled]' "
        "and a C compiler), built in the background once per version and used only when identical to LightGBM on the "
        "latest day of the features table; LightGBM answers until then, and whenever it is not.",
    )
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest accepted request body.")
    token_env: str = Field("MLOPS_SERVE_TOKEN", description="Env var with the optional bearer token for predictions.")
    admin_token_env: str = Field("MLOPS_SERVE_ADMIN_TOKEN", description="Env var with the token admin endpoints require.")
    log_queue_rows: int = Field(100_000, ge=1, description="Prediction-log rows buffered before overflow is counted.")
    log_flush_seconds: float = Field(2.0, gt=0)
    reference_refresh_seconds: float = Field(
        60.0,
        ge=0,
        description="How often a replica checks the tables its feature reference was built from (raw, reference "
        "tables) and rebuilds it when one has moved, so requests use the history the features asset would use for the "
        "next day, not the history as of the version's load; 0: only when a version loads.",
    )

    @model_validator(mode="after")
    def _groups(self) -> "ServingSpec":
        """Settings Serve would not follow, refused: a group of 0 replicas was started with 1, a GPU asked of a CPU group
        waited for one, and a GPU group without GPUs was dropped."""
        for name in ("cpu", "challenger", "v1_route"):
            group = getattr(self, name)
            if group is None:
                continue
            if group.replicas < 1 and group.min_replicas is None:
                raise ValueError(f"{name}.replicas: at least 1" + (" (null turns the V1 route off)" if name == "v1_route" else ""))
            if group.num_gpus > 0:
                raise ValueError(f"{name}.num_gpus: the {name} group runs on CPUs; declare GPU replicas under serving.gpu")
        if self.gpu is not None and self.gpu.replicas > 0 and self.gpu.num_gpus <= 0:
            raise ValueError("gpu.num_gpus: a GPU group needs num_gpus above 0 (or replicas: 0 to turn it off)")
        return self


class GovernanceSpec(_Strict):
    """Erasure of a data subject (`mlops erase`): which columns identify one, and how long old Delta
    versions keep erased rows readable before they are vacuumed away."""

    subject_columns: list[str] = Field(
        default_factory=list,
        description="Declared columns that identify a data subject; logged with each prediction as subject_<column>.",
    )
    erasure_retention_hours: int = Field(
        0,
        ge=0,
        description="Delta history kept after an erasure, in whole hours (Delta's vacuum counts hours; 0.5 was vacuumed as 0): "
        "0 removes the rows from every old version at once.",
    )


class PipelineDeclaration(_Strict):
    name: Identifier
    description: str = ""
    landing: LandingSpec
    partitioning: PartitioningSpec
    table_schema: SchemaSpec = Field(alias="schema")
    validation: ValidationSpec = ValidationSpec()
    features: FeaturesSpec
    target: TargetSpec
    training: TrainingSpec = TrainingSpec()
    gates: GatesSpec = GatesSpec()
    promotion: PromotionSpec = PromotionSpec()
    drift: DriftSpec = DriftSpec()
    batch_scoring: BatchScoringSpec = BatchScoringSpec()
    serving: ServingSpec = ServingSpec()
    governance: GovernanceSpec = GovernanceSpec()

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name == GATEWAY_APP:
            raise ValueError(f"'{name}' is the name of the serving gateway's Ray Serve application; name the pipeline otherwise")
        return name

    @model_validator(mode="after")
    def _target(self) -> "PipelineDeclaration":
        col = self.table_schema.columns.get(self.target.column)
        if col is None:
            raise ValueError(f"target.column '{self.target.column}' is not a declared schema column")
        if self.target.task in ("binary", "multiclass") and not (self.target.classes or col.allowed):
            raise ValueError(f"target.classes is required for a {self.target.task} target")
        if self.target.classes and col.allowed is not None and (outside := [c for c in self.target.classes if c not in col.allowed]):
            raise ValueError(f"target.classes {outside} are not among schema.columns.{self.target.column}.allowed: no row could have them")
        declared = set(self.table_schema.columns)
        fairness = self.gates.fairness
        if fairness is not None:
            unknown = [c for c in fairness.groups if c not in declared]
            if unknown:
                raise ValueError(f"gates.fairness.groups names columns that are not declared: {unknown}")
            # the gap is relative, (max - min) / max: only metrics that cannot be negative (not r2)
            known = (set(METRICS[self.target.task]) - {"r2"}) | (set(RATE_METRICS) if self.target.task == "binary" else set())
            if fairness.metric not in known:
                raise ValueError(
                    f"gates.fairness.metric '{fairness.metric}' is not a fairness metric of a {self.target.task} model "
                    f"(one that cannot be negative); known: {', '.join(sorted(known))}"
                )
        unknown = [c for c in self.governance.subject_columns if c not in declared]
        if unknown:
            raise ValueError(f"governance.subject_columns names columns that are not declared: {unknown}")
        self._check_time_column()
        self._check_lookups()
        history, kind = self.features.history_days, self.partitioning.kind
        if kind != "hourly" and history > 366:  # the field's own bound is an hourly pipeline's (a year of hours)
            raise ValueError(f"features.history_days ({history}) counts {kind} partitions: at most 366")
        classes = self.target.classes or col.allowed or []
        if self.target.task == "binary" and classes and len(classes) != 2:
            raise ValueError("a binary target needs exactly two classes")
        return self

    def _check_lookups(self) -> None:
        columns = self.table_schema.columns
        added: set[str] = set()
        for i, lookup in enumerate(self.features.lookups):
            where = f"features.lookups.{i} ({lookup.table})"
            unknown = [c for c in lookup.keys if c not in columns]
            if unknown:
                raise ValueError(f"{where}: keys name columns that are not declared: {unknown}")
            floats = [c for c in lookup.keys if columns[c].type.startswith("float")]
            if floats:
                raise ValueError(f"{where}: keys name float columns {floats}; match on integers, strings, dates or times")
            outputs = list(lookup.outputs.values())
            clash = sorted((set(outputs) & set(columns)) | (set(outputs) & added) | {c for c in outputs if outputs.count(c) > 1})
            if clash:
                raise ValueError(f"{where}: columns would overwrite {clash}; rename them (table column: new name)")
            added.update(outputs)

    def _check_time_column(self) -> None:
        time = self.partitioning.time_column
        if time is None:
            return
        names = [time] if isinstance(time, str) else list(time)
        columns = self.table_schema.columns
        unknown = [c for c in names if c not in columns]
        if unknown:
            raise ValueError(f"partitioning.time_column names columns that are not declared: {unknown}")
        if isinstance(time, str) and columns[time].type not in ("date", "datetime"):
            raise ValueError(f"partitioning.time_column '{time}' is a {columns[time].type} column, not a date or datetime")
        if not isinstance(time, str):
            if len(names) != 3:
                raise ValueError("partitioning.time_column as a list names three columns: [year, month, day]")
            wrong = [c for c in names if not columns[c].type.startswith("int")]
            if wrong:
                raise ValueError(f"partitioning.time_column [year, month, day] must be integer columns: {wrong}")
        if self.partitioning.kind == "hourly" and (not isinstance(time, str) or columns[time].type == "date"):
            # a day places no row in an hour: every row was quarantined as outside its partition
            raise ValueError("partitioning.time_column of an hourly pipeline must be a datetime column (a date names no hour)")

    @property
    def target_classes(self) -> list:
        return list(self.target.classes or self.table_schema.columns[self.target.column].allowed or [])

    def fingerprint(self) -> str:
        """A stable hash of the declaration, recorded in lineage."""
        canonical = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def field_errors(err: ValidationError) -> list[str]:
    """Each problem pydantic found, as `field.path: message`: what a user fixes, without pydantic's URLs."""
    lines = []
    for e in err.errors():
        # a validator's own message, which names its fields: pydantic's "Value error, " and a "(top level)" place said nothing
        message = e["msg"].removeprefix("Value error, ")
        where = ".".join(str(p) for p in e["loc"])
        lines.append(f"{where}: {message}" if where else message)
    return lines


def _describe(err: ValidationError, source: str) -> str:
    return "\n".join([f"invalid pipeline declaration {source}:", *(f"  {line}" for line in field_errors(err))])


def parse_declaration(data: Any, source: str = "<memory>") -> PipelineDeclaration:
    if not isinstance(data, dict):
        raise DeclarationError(f"invalid pipeline declaration {source}: expected a mapping at the top level")
    try:
        return PipelineDeclaration.model_validate(data)
    except ValidationError as err:
        raise DeclarationError(_describe(err, source)) from None


def derive_declaration(base: PipelineDeclaration, source: str, **sections: dict) -> PipelineDeclaration:
    """`base` with some sections updated key by key, validated again (benchmarks run variants)."""
    data = base.model_dump(mode="json", by_alias=True, exclude_none=True)
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return parse_declaration(data, source)


def _documents(path: Path) -> list:
    try:
        return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except OSError as err:
        raise DeclarationError(f"cannot read pipeline declaration {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise DeclarationError(f"pipeline declaration {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except yaml.YAMLError as err:
        raise DeclarationError(f"pipeline declaration {path} is not valid YAML: {err}") from None


def _is_component(doc: Any) -> bool:
    return isinstance(doc, dict) and "type" in doc and "name" not in doc


def declaration_attributes(path: str | Path) -> list[dict]:
    """The declarations a YAML file holds, as data: a plain declaration, or the attributes of each
    `type: mlops_assets.components.MlPipeline` component in it (a defs.yaml may hold several
    components, and components of other types, which are not ours)."""
    path = Path(path)
    found = []
    for doc in _documents(path):
        if _is_component(doc):
            if doc["type"] == MLPIPELINE_TYPE:
                found.append(doc.get("attributes"))
            elif str(doc["type"]).rsplit(".", 1)[-1].lower().replace("_", "") == "mlpipeline":
                # another library's component is not ours; a misspelling of ours would drop the pipeline silently
                raise DeclarationError(f"{path}: component type '{doc['type']}' is not {MLPIPELINE_TYPE}")
        else:
            found.append(doc)
    return found


def load_declaration(path: str | Path) -> PipelineDeclaration:
    """The one pipeline a file declares."""
    decls = load_file(path)
    if len(decls) != 1:
        raise DeclarationError(f"{path} declares {len(decls)} pipelines ({MLPIPELINE_TYPE} components); expected one")
    return decls[0]


def load_file(path: str | Path) -> list[PipelineDeclaration]:
    found = declaration_attributes(path)
    return [parse_declaration(data, str(path) if len(found) == 1 else f"{path} (document {i + 1})") for i, data in enumerate(found)]


def declaration_files(spec: str | None = None) -> list[Path]:
    """Declaration files from ``$MLOPS_PIPELINES`` (files or folders, os.pathsep separated; default:
    the package's defs folder). Folders are searched recursively for ``*.yaml`` and ``*.yml``."""
    spec = spec if spec is not None else os.environ.get("MLOPS_PIPELINES", str(PACKAGED_PIPELINES))
    files: list[Path] = []
    for part in filter(None, spec.split(os.pathsep)):
        p = Path(part).expanduser()
        if p.is_dir():
            found = (*p.rglob("*.yaml"), *p.rglob("*.yml"))
            files.extend(sorted(f for f in found if not any(part.startswith(".") for part in f.relative_to(p).parts)))
        elif p.is_file():
            files.append(p)
        else:
            raise DeclarationError(f"MLOPS_PIPELINES names {p}, which does not exist")
    return files


def load_declarations(spec: str | None = None) -> list[PipelineDeclaration]:
    decls = [d for f in declaration_files(spec) for d in load_file(f)]
    names = [d.name for d in decls]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DeclarationError(f"pipeline names must be unique; declared more than once: {dupes}")
    check_distinct_names(decls)
    return decls


def check_distinct_names(decls: list[PipelineDeclaration]) -> None:
    """No two pipelines may derive the same job, sensor or schedule name (`a` and `a_serving` both derive
    `a_serving_drift_sensor`): Dagster would refuse the code location with an error naming neither pipeline."""
    seen: dict[str, str] = {}
    for decl in decls:
        for name in sorted(derived_names(decl)):
            if seen.get(name, decl.name) != decl.name:
                raise DeclarationError(
                    f"pipelines '{seen[name]}' and '{decl.name}' both derive the Dagster name '{name}'; rename one "
                    "(a pipeline name that is another's plus a suffix such as _serving can collide)"
                )
            seen[name] = decl.name
