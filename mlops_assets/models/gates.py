"""The gates a challenger must pass: quality floors, no regression, data checks, and fairness
across declared groups where the declaration asks for it.

Challenger and champion are scored here on the same rows, the challenger's
hold-out days read at the Delta version the challenger recorded, with the
models as registered (the LightGBM text files serving loads). A first model,
with no champion, passes the regression gate on floors alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.lineage import TrainingPlan
from mlops_assets.core.metrics import PRIMARY_METRIC, RATE_METRICS, metric, score
from mlops_assets.core.names import (
    CHAMPION,
    DATA_CHECKS,
    FAIRNESS,
    FLOORS,
    NO_REGRESSION,
    PARTITION_COLUMN,
    RAW,
    SOURCE_ROW,
)
from mlops_assets.models.training import labels, matrix, predict, read_window
from resources.delta_lake import DeltaLakeResource
from resources.mlflow_registry import MlflowRegistryResource
from resources.pipeline_tables import quarantined_share
from resources.registered_models import (
    alias_version,
    get_version,
    load_booster,
    plan_of,
    require_unerased,
)

GATE_NAMES = (FLOORS, NO_REGRESSION, DATA_CHECKS, FAIRNESS)


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    description: str
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    pipeline: str
    version: str
    champion_version: str | None
    holdout_rows: int
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    gates: list[GateResult]
    is_champion: bool = False  # the version gated is the champion itself (`mlops gate` of it)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def failed(self) -> list[str]:
        return [g.name for g in self.gates if not g.passed]


def holdout_frame(plan: TrainingPlan, delta: DeltaLakeResource) -> pl.DataFrame:
    window = read_window(plan, delta)
    return window.filter((pl.col(PARTITION_COLUMN) >= plan.holdout_start) & pl.col(plan.target).is_not_null())


def floors_gate(decl: PipelineDeclaration, measured: dict[str, float]) -> GateResult:
    rows, failed = [], []
    for name, bound in decl.gates.floors.items():
        m = metric(decl.target.task, name)
        ok = m.passes_floor(measured[name], bound)
        op = ">=" if m.higher_is_better else "<="
        rows.append(f"{name} = {measured[name]:.4f} (must be {op} {bound}) {'ok' if ok else 'FAILED'}")
        if not ok:
            failed.append(name)
    desc = "; ".join(rows) if rows else "no floors declared"
    return GateResult(FLOORS, not failed, desc, {"floors": dict(decl.gates.floors), "measured": measured, "failed_metrics": failed})


def compared_metrics(decl: PipelineDeclaration) -> list[str]:
    return list(decl.gates.compare_metrics) or [PRIMARY_METRIC[decl.target.task]]


def regression_gate(
    decl: PipelineDeclaration,
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    champion_version: str | None,
    champion_error: str | None = None,
    is_champion: bool = False,
) -> GateResult:
    if champion_error is not None:
        return GateResult(
            NO_REGRESSION, False, f"cannot score champion v{champion_version}: {champion_error}", {"champion_version": champion_version}
        )
    if is_champion:  # `mlops gate` of the champion itself: it said "no champion yet"
        return GateResult(
            NO_REGRESSION, True, "it is the champion: nothing to compare it with, floors alone decide", {"champion_version": "itself"}
        )
    if champion is None:
        return GateResult(NO_REGRESSION, True, "no champion yet: the first model passes on floors alone", {"champion_version": "none"})
    tol = decl.gates.max_regression
    rows, failed, table = [], [], {}
    for name in compared_metrics(decl):
        m = metric(decl.target.task, name)
        limit = m.regression_limit(champion[name], tol)
        ok = m.within(challenger[name], champion[name], tol)
        table[name] = {"challenger": challenger[name], "champion": champion[name], "limit": limit, "passed": ok}
        rows.append(
            f"{name}: challenger {challenger[name]:.4f} vs champion v{champion_version} {champion[name]:.4f} "
            f"(limit {limit:.4f}, tolerance {tol:.1%}) {'ok' if ok else 'FAILED'}"
        )
        if not ok:
            failed.append(name)
    return GateResult(
        NO_REGRESSION,
        not failed,
        "; ".join(rows),
        {"champion_version": champion_version, "max_regression": tol, "comparison": table, "failed_metrics": failed},
    )


def data_checks_gate(decl: PipelineDeclaration, delta: DeltaLakeResource, plan: TrainingPlan) -> GateResult:
    """The raw validation rule (quarantined share <= limit) for every day of the window, from Delta."""
    limit = decl.validation.max_failure_rate
    window = pl.col(PARTITION_COLUMN).is_between(pl.lit(plan.partition_start), pl.lit(plan.partition_end))
    if delta.scan(decl.name, RAW) is None:
        return GateResult(DATA_CHECKS, False, "no raw table: the window was never validated", {})
    per_day = quarantined_share(delta, decl.name, window)
    trained = set(read_window(plan, delta).get_column(PARTITION_COLUMN).unique().to_list())
    checked = set(per_day.get_column(PARTITION_COLUMN).to_list())
    unvalidated = sorted(trained - checked)
    failing = per_day.filter(pl.col("failure_rate") > limit)
    bad = failing.get_column(PARTITION_COLUMN).to_list()
    passed = not bad and not unvalidated
    worst = per_day.sort("failure_rate", descending=True).head(1)
    unit = decl.partitioning.unit
    desc = (
        f"{len(trained)} {unit}s validated; worst {worst[PARTITION_COLUMN][0]} at {worst['failure_rate'][0]:.2%} (limit {limit:.1%})"
        if passed and worst.height
        else f"{unit}s over the {limit:.1%} quarantine limit: {bad or 'none'}; {unit}s with features but no raw data: {unvalidated or 'none'}"
    )
    return GateResult(
        DATA_CHECKS,
        passed,
        desc,
        {"days": len(trained), "failing_days": bad, "unvalidated_days": unvalidated, "max_failure_rate": limit},
    )


def group_columns(
    decl: PipelineDeclaration, delta: DeltaLakeResource, holdout: pl.DataFrame, columns: list[str], raw_version: int | None = None
) -> pl.DataFrame:
    """The hold-out rows' values of `columns`: from the features table where it carries them, else
    from the raw rows they were built from (same partition and source row), at `raw_version` (the plan's: a day
    landed again since names other rows by the same source row)."""
    missing = [c for c in columns if c not in holdout.columns]
    if not missing:
        return holdout.select(columns)
    days = holdout.get_column(PARTITION_COLUMN).unique().sort().to_list()
    raw = delta.read_partitions(decl.name, RAW, days, raw_version)
    if raw is None:
        raise ValueError(f"fairness gate: no raw rows for the hold-out days to read {missing} from")
    keys = [PARTITION_COLUMN, SOURCE_ROW]
    joined = holdout.select(keys, *[c for c in columns if c in holdout.columns]).join(
        raw.select(*keys, *missing), on=keys, how="left", maintain_order="left"
    )
    return joined.select(columns)


def fairness_gate(decl: PipelineDeclaration, groups: pl.DataFrame, y, predictions) -> GateResult:
    """Per group of each declared column, the hold-out metric; the gate fails when the largest relative
    gap between gated groups, (max - min) / max, is over `max_gap`."""
    spec = decl.gates.fairness
    assert spec is not None
    m = RATE_METRICS.get(spec.metric) or metric(decl.target.task, spec.metric)
    table, gaps = [], {}
    for column in spec.groups:
        values = []
        indexed = groups.select(pl.col(column).cast(pl.String).fill_null("(null)").alias("group")).with_row_index("i")
        for (group,), part in sorted(indexed.group_by("group"), key=lambda g: str(g[0][0])):
            idx = part.get_column("i").to_numpy()
            value = float(m.fn(y[idx], predictions[idx]))
            gated = len(idx) >= spec.min_group_rows and value == value  # nan (e.g. no positives) is reported, not gated
            table.append({"column": column, "group": group, "rows": len(idx), spec.metric: value, "gated": gated})
            if gated:
                values.append(value)
        top = max(values, default=0.0)
        gaps[column] = (top - min(values)) / top if len(values) > 1 and top > 0 else 0.0
    worst_column = max(gaps, key=lambda c: gaps[c])
    largest = gaps[worst_column]
    passed = largest <= spec.max_gap
    gated_rows = [r for r in table if r["column"] == worst_column and r["gated"]]
    lo = min(gated_rows, key=lambda r: r[spec.metric], default=None)
    hi = max(gated_rows, key=lambda r: r[spec.metric], default=None)
    detail = f"{lo['group']} {lo[spec.metric]:.4f} .. {hi['group']} {hi[spec.metric]:.4f}" if lo and hi else "fewer than two gated groups"
    desc = (
        f"{spec.metric} by {', '.join(spec.groups)}: largest gap {largest:.1%} on {worst_column} ({detail}; "
        f"limit {spec.max_gap:.1%}, groups under {spec.min_group_rows} rows not gated) {'ok' if passed else 'FAILED'}"
    )
    return GateResult(
        FAIRNESS,
        passed,
        desc,
        {"metric": spec.metric, "max_gap": spec.max_gap, "gaps": gaps, "largest_gap": largest, "groups": table},
    )


def evaluate(decl: PipelineDeclaration, delta: DeltaLakeResource, registry: MlflowRegistryResource, version: str) -> Evaluation:
    client = registry.client()
    challenger_version = get_version(client, decl.name, version)
    # its hold-out is read at the recorded Delta version: after an erasure, a missing-file error from polars
    require_unerased(challenger_version, "cannot be gated again")
    plan = plan_of(challenger_version)
    holdout = holdout_frame(plan, delta)
    if holdout.height == 0:
        raise ValueError(f"model {decl.name} v{version}: no hold-out rows from {plan.holdout_start} to {plan.partition_end}")
    y = labels(holdout, plan)
    predictions = predict(load_booster(registry, decl.name, version), matrix(holdout, plan.feature_columns), plan.task)
    challenger = score(plan.task, y, predictions)
    champion_mv = alias_version(client, decl.name, CHAMPION)
    champion, champion_version, champion_error = None, None, None
    is_champion = champion_mv is not None and str(champion_mv.version) == str(version)
    if champion_mv is not None and str(champion_mv.version) != str(version):
        champion_version = str(champion_mv.version)
        champion_plan = plan_of(champion_mv)
        if champion_plan.task != plan.task or champion_plan.classes != plan.classes:
            champion_error = f"it is a {champion_plan.task} model over classes {champion_plan.classes}"
        else:
            try:
                X = matrix(holdout, champion_plan.feature_columns)
            except ValueError as err:  # the feature code changed since the champion was trained
                champion_error = str(err)
            else:
                booster = load_booster(registry, decl.name, champion_version)
                champion = score(plan.task, y, predict(booster, X, plan.task))
    gates = [
        floors_gate(decl, challenger),
        regression_gate(decl, challenger, champion, champion_version, champion_error, is_champion=is_champion),
        data_checks_gate(decl, delta, plan),
    ]
    if decl.gates.fairness is not None:
        groups = group_columns(decl, delta, holdout, list(decl.gates.fairness.groups), plan.raw_version)
        gates.append(fairness_gate(decl, groups, y, predictions))
    return Evaluation(decl.name, str(version), champion_version, holdout.height, challenger, champion, gates, is_champion)
