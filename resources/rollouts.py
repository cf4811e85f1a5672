"""Progressive rollouts: where one stands (from the audit log) and what the live traffic says about it.

The state of a rollout lives only in the audit log (Delta): `rollout_start` and each
`rollout_step` row carry the step and its share, so a restarted daemon or Serve
picks the rollout up where the log says it is. The signals come from the prediction
log: during a rollout the new version (role `canary`) and the champion answer the same
live traffic, so their error rates, latencies and prediction distributions are
compared directly, without a reference window: the new version's answers of the
current step against the champion's since the rollout began. A step bakes from the new version's first
answer in it, not from its audit row: the first step is recorded before the deploy run puts the version
on Serve, and the time that takes is no exposure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl

from mlops_assets.core.declaration import RolloutGuardsSpec, RolloutSpec
from mlops_assets.core.metrics import LIVE_PRIMARY_METRIC, live_metrics, metric
from mlops_assets.core.names import BATCH_SCORES, CHAMPION, FEATURES, PARTITION_COLUMN, PREDICTION_LOG, SOURCE_ROW
from resources.audit_log import ROLLOUT_ACTIONS
from resources.delta_lake import DeltaLakeResource

CANARY = "canary"  # the role the prediction log gives the new version's answers during a step
IN_PROGRESS = ("rollout_start", "rollout_step")


@dataclass(frozen=True)
class Rollout:
    """A rollout in progress: `version` serves `share` of the traffic beside `from_version` since `step_started_at`."""

    pipeline: str
    version: int
    from_version: int | None
    step: int
    steps: tuple[float, ...]
    started_at: datetime
    step_started_at: datetime

    @property
    def share(self) -> float:
        return self.steps[self.step]

    @property
    def last_step(self) -> bool:
        return self.step == len(self.steps) - 1

    def describe(self) -> str:
        return (
            f"v{self.version} at step {self.step + 1}/{len(self.steps)} ({self.share:.0%} of traffic) since {self.step_started_at:%H:%M:%S}"
        )


def step_metrics(step: int, steps: list[float] | tuple[float, ...], **extra) -> dict:
    """What a rollout_start / rollout_step row records, read back by `current`."""
    return {"step": step, "steps": list(steps), "share": steps[step], **extra}


def current(events: pl.DataFrame) -> Rollout | None:
    """The rollout in progress by the audit log (its last rollout row is a start or a step), else None."""
    rows = events.filter(pl.col("action").is_in(ROLLOUT_ACTIONS))
    if rows.height == 0:
        return None
    last = rows.row(rows.height - 1, named=True)
    if last["action"] not in IN_PROGRESS:
        return None
    start = rows.filter((pl.col("action") == "rollout_start") & (pl.col("model_version") == last["model_version"])).tail(1)
    metrics = json.loads(last["metrics"] or "{}")
    return Rollout(
        pipeline=last["pipeline"],
        version=int(last["model_version"]),
        from_version=last["from_version"],
        step=int(metrics["step"]),
        steps=tuple(float(s) for s in metrics["steps"]),
        started_at=start["at"][0] if start.height else last["at"],
        step_started_at=last["at"],
    )


def moved_aliases(rollout: Rollout, challenger: int | None, champion: int | None) -> str | None:
    """Why a rollout ends when the aliases (as the registry holds them) no longer name its two versions, moved by hand
    in MLflow: the challenger's gets no traffic from Serve, and a new champion is not the baseline its guards compare
    with; None while both do. The reason names the alias, what it holds and what the rollout expected."""
    if challenger != rollout.version:
        return f"the challenger alias names {_named(challenger)}, not v{rollout.version}: set outside the rollout"
    if champion != rollout.from_version:
        return (
            f"the champion alias names {_named(champion)}, not v{rollout.from_version}, which the rollout compares "
            f"v{rollout.version} with: set outside the rollout; re-run v{rollout.version}'s gates against it "
            f"(`mlops gate {rollout.pipeline} {rollout.version}`) to roll it out again"
        )
    return None


def _named(version: int | None) -> str:
    return "no version" if version is None else f"v{version}"


@dataclass(frozen=True)
class GuardReading:
    name: str
    value: float | None  # None: not enough answers yet to judge
    threshold: float
    detail: str = ""
    required: bool = True  # False: judged where the data exists, never waited for (labels may not arrive)

    @property
    def breached(self) -> bool:
        return self.value is not None and self.value > self.threshold

    def describe(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:.4g}"
        return f"{self.name} {value} (max {self.threshold:g}{'; ' + self.detail if self.detail else ''})"


@dataclass(frozen=True)
class StepSignals:
    canary_requests: int
    champion_requests: int
    readings: list[GuardReading] = field(default_factory=list)
    serving_since: datetime | None = None  # the new version's first answer (or failure) in the step: its bake starts

    def breach(self) -> GuardReading | None:
        return next((r for r in self.readings if r.breached), None)

    def as_metadata(self) -> dict:
        return {
            "canary_requests": self.canary_requests,
            "champion_requests": self.champion_requests,
            **{r.name: r.value for r in self.readings},
        }


def _step_log(delta: DeltaLakeResource, rollout: Rollout) -> pl.DataFrame:
    """One row per request and role (answer or failure): the new version's in this step, the champion's
    since the rollout began (at the last step, 100%, the champion answers nothing new)."""
    lf = delta.scan(rollout.pipeline, PREDICTION_LOG)
    empty = pl.DataFrame(
        schema={
            "role": pl.String,
            "request_id": pl.String,
            "failed": pl.Boolean,
            "latency_ms": pl.Float64,
            "logged_at": pl.Datetime("us", "UTC"),
        }
    )
    if lf is None:
        return empty.with_columns(pl.lit(None, pl.List(pl.Float64)).alias("predictions"))
    names = lf.collect_schema().names()
    failed = pl.col("error").is_not_null() if "error" in names else pl.lit(False)
    champion = (pl.col("role") == CHAMPION) & (pl.col("model_version") == rollout.from_version)
    canary = (pl.col("role") == CANARY) & (pl.col("model_version") == rollout.version) & (pl.col("logged_at") >= rollout.step_started_at)
    return (
        lf.filter((pl.col("logged_at") >= rollout.started_at) & (champion | canary))
        .with_columns(failed.alias("failed"))
        .filter(pl.col("served") | pl.col("failed"))  # a failed canary answer is logged unserved; the champion answered instead
        .group_by("role", "request_id")
        .agg(
            pl.col("failed").any(),
            pl.col("latency_ms").max(),
            pl.col("logged_at").min(),
            pl.col("prediction").filter(~pl.col("failed")).alias("predictions"),
        )
        .collect()
    )


def _ks_distance(a: pl.Series, b: pl.Series) -> float:
    from scipy.stats import ks_2samp

    return float(ks_2samp(a.to_numpy(), b.to_numpy()).statistic)


def _live_metric(delta: DeltaLakeResource, rollout: Rollout, guards: RolloutGuardsSpec, task: str, target: str) -> GuardReading:
    """The new version's live metric against the champion's on the same rows, where labels arrived: batch
    scoring scores both versions of each day while a rollout runs (monitoring/assets.py)."""
    name, threshold = "live_metric_regression", guards.max_live_metric_regression
    scores, labels = delta.scan(rollout.pipeline, BATCH_SCORES), delta.scan(rollout.pipeline, FEATURES)
    if scores is None or labels is None or rollout.from_version is None:
        return GuardReading(name, None, threshold, "no batch scores yet", required=False)
    rows = (
        scores.filter(pl.col("model_version").is_in([rollout.version, rollout.from_version]))
        .select(PARTITION_COLUMN, SOURCE_ROW, "model_version", "prediction")
        .join(labels.select(PARTITION_COLUMN, SOURCE_ROW, target), on=[PARTITION_COLUMN, SOURCE_ROW], how="inner")
        .filter(pl.col(target).is_not_null())
        .collect()
    )
    both = rows.group_by(PARTITION_COLUMN, SOURCE_ROW).len().filter(pl.col("len") == 2).drop("len")
    rows = rows.join(both, on=[PARTITION_COLUMN, SOURCE_ROW], how="semi")
    sides = {v: rows.filter(pl.col("model_version") == v) for v in (rollout.version, rollout.from_version)}
    if sides[rollout.version].height < guards.min_rows:
        return GuardReading(name, None, threshold, f"{sides[rollout.version].height} labelled rows scored by both", required=False)
    m = metric(task, LIVE_PRIMARY_METRIC[task])
    value = {v: live_metrics(task, f[target].to_numpy(), f["prediction"].to_numpy())[m.name] for v, f in sides.items()}
    new, old = value[rollout.version], value[rollout.from_version]
    loss = (old - new if m.higher_is_better else new - old) / max(abs(old), 1e-12)
    return GuardReading(
        name, loss, threshold, f"{m.name} new {new:.4g} vs champion {old:.4g} on {sides[rollout.version].height} rows", required=False
    )


def read_signals(
    delta: DeltaLakeResource, rollout: Rollout, guards: RolloutGuardsSpec, task: str = "regression", target: str = ""
) -> StepSignals:
    """The guards' values for the current step, from the prediction log since the step began (and, with the
    target column, the live metric from batch scores where labels arrived)."""
    log = _step_log(delta, rollout)
    sides = {role: log.filter(pl.col("role") == role) for role in (CANARY, CHAMPION)}
    requests = {role: frame.height for role, frame in sides.items()}
    error_rate = {role: (frame["failed"].sum() / frame.height if frame.height else None) for role, frame in sides.items()}
    readings = []
    if requests[CANARY] < guards.min_error_requests:  # one failed request of the first few is not a rate
        readings.append(
            GuardReading(
                "error_rate_increase",
                None,
                guards.max_error_rate_increase,
                f"needs {guards.min_error_requests} requests of the new version ({requests[CANARY]})",
            )
        )
    else:
        increase = error_rate[CANARY] - (error_rate[CHAMPION] or 0.0)
        readings.append(
            GuardReading(
                "error_rate_increase",
                increase,
                guards.max_error_rate_increase,
                f"new {error_rate[CANARY]:.2%} of {requests[CANARY]} vs champion {(error_rate[CHAMPION] or 0.0):.2%} of {requests[CHAMPION]}",
            )
        )
    answered = {role: frame.filter(~pl.col("failed")) for role, frame in sides.items()}
    enough = all(frame.height >= guards.min_rows for frame in answered.values())
    short = f"needs {guards.min_rows} answers per side (new {answered[CANARY].height}, champion {answered[CHAMPION].height})"
    if enough:
        p99 = {role: float(frame["latency_ms"].quantile(0.99, "higher")) for role, frame in answered.items()}
        ratio = p99[CANARY] / max(p99[CHAMPION], 1e-9)
        readings.append(
            GuardReading("p99_latency_ratio", ratio, guards.max_p99_latency_ratio, f"new {p99[CANARY]:.2f} ms vs {p99[CHAMPION]:.2f} ms")
        )
        preds = {role: frame["predictions"].explode().drop_nulls() for role, frame in answered.items()}
        readings.append(
            GuardReading("prediction_shift", _ks_distance(preds[CANARY], preds[CHAMPION]), guards.max_prediction_shift, "KS distance")
        )
    else:
        readings.append(GuardReading("p99_latency_ratio", None, guards.max_p99_latency_ratio, short))
        readings.append(GuardReading("prediction_shift", None, guards.max_prediction_shift, short))
    if target:
        readings.append(_live_metric(delta, rollout, guards, task, target))
    since = sides[CANARY]["logged_at"].min() if requests[CANARY] else None
    return StepSignals(requests[CANARY], requests[CHAMPION], readings, serving_since=since)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Verdict:
    action: str  # wait | advance | complete | rollback
    reason: str
    guard: GuardReading | None = None


def decide(rollout: Rollout, signals: StepSignals, spec: RolloutSpec, now: datetime | None = None) -> Verdict:
    """Roll back on any breach at once; otherwise the step ends when it baked long enough with enough traffic,
    its bake counted from the new version's first answer in the step (`signals.serving_since`)."""
    breach = signals.breach()
    values = "; ".join(r.describe() for r in signals.readings)
    if breach is not None:
        return Verdict("rollback", f"guard {breach.name} = {breach.value:.4g} > {breach.threshold:g} ({breach.detail})", breach)
    now = now or datetime.now(UTC)
    baked = 0.0 if signals.serving_since is None else (now - signals.serving_since).total_seconds()
    waiting = []
    if signals.serving_since is None:
        waiting.append("no answer of the new version yet: the bake starts at its first")
    elif baked < spec.bake_minutes * 60:
        waiting.append(f"baking {baked:.0f}/{spec.bake_minutes * 60:.0f} s")
    if signals.canary_requests < spec.min_requests:
        waiting.append(f"{signals.canary_requests}/{spec.min_requests} requests")
    if any(r.value is None and r.required for r in signals.readings):
        waiting.append("guards not readable yet")
    if waiting:
        return Verdict("wait", f"{rollout.describe()}: {', '.join(waiting)}; {values}")
    action = "complete" if rollout.last_step else "advance"
    return Verdict(
        action, f"step {rollout.step + 1}/{len(rollout.steps)} baked {baked:.0f} s with {signals.canary_requests} requests; {values}"
    )
