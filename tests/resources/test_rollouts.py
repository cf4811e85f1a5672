"""Rollout state from the audit log and guard values from the prediction log, on real Delta tables."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from mlops_assets.core.declaration import RolloutGuardsSpec, RolloutSpec
from mlops_assets.core.names import PREDICTION_LOG
from resources import rollouts
from resources.audit_log import AuditEvent, history, passed_gates, record
from resources.delta_lake import DeltaLakeResource

PIPELINE = "p"


@pytest.fixture
def delta(tmp_path) -> DeltaLakeResource:
    return DeltaLakeResource(root=str(tmp_path / "delta"))


def start(delta: DeltaLakeResource, version: int = 2, steps=(0.25, 1.0)) -> rollouts.Rollout:
    record(
        delta,
        PIPELINE,
        AuditEvent(
            "rollout_start",
            version,
            actor="t",
            reason="gates passed",
            alias="challenger",
            from_version=1,
            metrics=rollouts.step_metrics(0, steps),
        ),
    )
    state = rollouts.current(history(delta, PIPELINE))
    assert state is not None
    return state


def log(
    delta: DeltaLakeResource, role: str, version: int, predictions, latency_ms: float = 2.0, failed: int = 0, at: datetime | None = None
) -> None:
    """Prediction-log rows as replicas write them (at `at`, else now): answers, then failed answers (unserved, `error` set)."""
    now = at or datetime.now(UTC)
    n = len(predictions)
    answers = pl.DataFrame(
        {
            "request_id": [f"{role}-{version}-{time.time_ns()}-{i}" for i in range(n)],
            "record": np.zeros(n, dtype=np.int32),
            "logged_at": [now] * n,
            "pipeline": [PIPELINE] * n,
            "model_version": [version] * n,
            "role": [role] * n,
            "served": [True] * n,
            "latency_ms": [latency_ms] * n,
            "prediction": np.asarray(predictions, dtype=np.float64),
        },
        schema_overrides={"logged_at": pl.Datetime("us", "UTC"), "model_version": pl.Int64},
    )
    delta.append(PIPELINE, PREDICTION_LOG, answers, merge_schema=True)
    if failed:
        errors = pl.DataFrame(
            {
                "request_id": [f"err-{role}-{time.time_ns()}-{i}" for i in range(failed)],
                "logged_at": [now] * failed,
                "pipeline": [PIPELINE] * failed,
                "model_version": [version] * failed,
                "role": [role] * failed,
                "served": [False] * failed,
                "latency_ms": [latency_ms] * failed,
                "error": ["ModelLoadError: needs features the feature code does not build"] * failed,
            },
            schema_overrides={"logged_at": pl.Datetime("us", "UTC"), "model_version": pl.Int64},
        )
        delta.append(PIPELINE, PREDICTION_LOG, errors, merge_schema=True)


def test_rollout_state_is_read_from_the_audit_log_step_by_step(delta):
    assert rollouts.current(history(delta, PIPELINE)) is None
    state = start(delta)
    assert (state.version, state.from_version, state.step, state.share, state.last_step) == (2, 1, 0, 0.25, False)
    assert passed_gates(history(delta, PIPELINE), 2)  # a rollout start is the platform's record of passed gates
    record(
        delta,
        PIPELINE,
        AuditEvent("rollout_step", 2, actor="t", reason="baked", from_version=1, metrics=rollouts.step_metrics(1, [0.25, 1.0])),
    )
    state = rollouts.current(history(delta, PIPELINE))
    assert state is not None and (state.step, state.share, state.last_step) == (1, 1.0, True)
    assert state.step_started_at > state.started_at
    record(delta, PIPELINE, AuditEvent("rollout_rollback", 2, actor="t", reason="guard"))
    assert rollouts.current(history(delta, PIPELINE)) is None


def test_healthy_step_waits_for_bake_and_traffic_then_advances(delta):
    spec = RolloutSpec(steps=[0.5, 1.0], bake_minutes=0.0, min_requests=100, guards=RolloutGuardsSpec(min_rows=20))
    state = start(delta, steps=(0.5, 1.0))
    rng = np.random.default_rng(0)
    log(delta, "champion", 1, rng.normal(10, 3, 60))
    log(delta, "canary", 2, rng.normal(10, 3, 60))
    log(delta, "canary", 3, rng.normal(90, 3, 60))  # another version's rows are not this rollout's
    log(delta, "shadow", 2, rng.normal(90, 3, 60))  # nor shadow answers
    signals = rollouts.read_signals(delta, state, spec.guards)
    assert (signals.canary_requests, signals.champion_requests) == (60, 60)
    values = {r.name: r.value for r in signals.readings}
    assert values["error_rate_increase"] == 0.0 and values["p99_latency_ratio"] == pytest.approx(1.0)
    assert values["prediction_shift"] < 0.3
    verdict = rollouts.decide(state, signals, spec)
    assert verdict.action == "wait" and "60/100 requests" in verdict.reason
    log(delta, "canary", 2, rng.normal(10, 3, 60))
    assert rollouts.decide(state, rollouts.read_signals(delta, state, spec.guards), spec).action == "advance"
    baking = spec.model_copy(update={"bake_minutes": 5.0})
    verdict = rollouts.decide(state, rollouts.read_signals(delta, state, spec.guards), baking)
    assert verdict.action == "wait" and "baking" in verdict.reason
    later = datetime.now(UTC) + timedelta(minutes=6)
    assert rollouts.decide(state, rollouts.read_signals(delta, state, spec.guards), baking, now=later).action == "advance"


def test_a_step_bakes_from_the_new_versions_first_answer_not_from_its_audit_row(delta):
    """The first step is recorded before the deploy run puts the version on Serve: a slow deploy ate into the
    bake, and the step was judged after less exposure than declared. Its bake counts from the first answer."""
    spec = RolloutSpec(steps=[0.5, 1.0], bake_minutes=5.0, min_requests=20, guards=RolloutGuardsSpec(min_rows=20))
    state = start(delta, steps=(0.5, 1.0))
    rng = np.random.default_rng(4)
    assert "no answer of the new version yet" in rollouts.decide(state, rollouts.read_signals(delta, state, spec.guards), spec).reason
    served = state.step_started_at + timedelta(minutes=4)  # the deploy took four minutes
    log(delta, "champion", 1, rng.normal(10, 3, 40), at=served)
    log(delta, "canary", 2, rng.normal(10, 3, 40), at=served)
    signals = rollouts.read_signals(delta, state, spec.guards)
    assert signals.serving_since == served
    verdict = rollouts.decide(state, signals, spec, now=state.step_started_at + timedelta(minutes=6))
    assert verdict.action == "wait" and "baking 120/300 s" in verdict.reason
    assert rollouts.decide(state, signals, spec, now=served + timedelta(minutes=5)).action == "advance"


@pytest.mark.parametrize(
    ("case", "guard"),
    [("errors", "error_rate_increase"), ("slow", "p99_latency_ratio"), ("shifted", "prediction_shift")],
)
def test_each_guard_rolls_back_at_once_without_waiting_for_the_bake(delta, case, guard):
    spec = RolloutSpec(steps=[0.1, 1.0], bake_minutes=60.0, min_requests=1000, guards=RolloutGuardsSpec(min_rows=30))
    state = start(delta, steps=(0.1, 1.0))
    rng = np.random.default_rng(1)
    log(delta, "champion", 1, rng.normal(10, 3, 200), latency_ms=2.0, failed=1)
    canary = {
        "errors": dict(predictions=rng.normal(10, 3, 40), failed=10),
        "slow": dict(predictions=rng.normal(10, 3, 40), latency_ms=9.0),
        "shifted": dict(predictions=rng.normal(25, 3, 40)),
    }[case]
    log(delta, "canary", 2, **canary)
    verdict = rollouts.decide(state, rollouts.read_signals(delta, state, spec.guards), spec)
    assert verdict.action == "rollback" and verdict.guard is not None
    assert verdict.guard.name == guard and verdict.guard.value > verdict.guard.threshold
    assert f"guard {guard} = " in verdict.reason


def test_latency_and_shift_are_not_judged_until_each_side_has_min_rows_answers(delta):
    """A p99 latency or a KS distance over a handful of answers is noise: a new version's first slow, shifted
    answers neither roll it back nor count as readings until both sides have `min_rows`; then they do."""
    spec = RolloutSpec(steps=[0.1, 1.0], bake_minutes=60.0, min_requests=1000, guards=RolloutGuardsSpec(min_rows=30))
    state = start(delta, steps=(0.1, 1.0))
    rng = np.random.default_rng(2)
    log(delta, "champion", 1, rng.normal(10, 3, 200), latency_ms=2.0)
    log(delta, "canary", 2, rng.normal(25, 3, 10), latency_ms=9.0)  # slow and shifted, but only 10 answers
    signals = rollouts.read_signals(delta, state, spec.guards)
    readings = {r.name: r for r in signals.readings}
    for name in ("p99_latency_ratio", "prediction_shift"):
        assert readings[name].value is None and "needs 30 answers per side (new 10, champion 200)" in readings[name].detail
    assert rollouts.decide(state, signals, spec).action == "wait"

    log(delta, "canary", 2, rng.normal(25, 3, 25), latency_ms=9.0)  # 35 answers: now both are judged
    signals = rollouts.read_signals(delta, state, spec.guards)
    assert {r.name for r in signals.readings if r.breached} == {"p99_latency_ratio", "prediction_shift"}
    verdict = rollouts.decide(state, signals, spec)
    assert verdict.action == "rollback" and verdict.guard is not None and verdict.guard.name == "p99_latency_ratio"


def test_only_failures_are_enough_to_roll_back(delta):
    """A version whose every answer fails has no latency or predictions to compare: its error rate decides."""
    spec = RolloutSpec(steps=[0.1, 1.0])
    state = start(delta, steps=(0.1, 1.0))
    log(delta, "canary", 2, [], failed=3)
    verdict = rollouts.decide(state, rollouts.read_signals(delta, state, spec.guards), spec)
    assert verdict.action == "wait" and "needs 20 requests of the new version (3)" in verdict.reason  # not a rate yet
    log(delta, "canary", 2, [], failed=17)
    verdict = rollouts.decide(state, rollouts.read_signals(delta, state, spec.guards), spec)
    assert verdict.action == "rollback" and verdict.guard.name == "error_rate_increase" and verdict.guard.value == 1.0


def test_before_any_traffic_nothing_is_judged(delta):
    spec = RolloutSpec(steps=[1.0], bake_minutes=0.0, min_requests=0)
    state = start(delta, steps=(1.0,))
    verdict = rollouts.decide(state, rollouts.read_signals(delta, state, spec.guards), spec)
    assert verdict.action == "wait" and "guards not readable yet" in verdict.reason


@pytest.mark.parametrize(
    ("steps", "message"),
    [([0.5, 0.2, 1.0], "increase"), ([0.1, 0.5], "last step must be 1.0"), ([0.0, 1.0], "share in (0, 1]"), ([], "at least 1")],
)
def test_bad_rollout_steps_are_refused_naming_the_field(steps, message):
    with pytest.raises(ValidationError) as err:
        RolloutSpec(steps=steps)
    assert "steps" in str(err.value) and message in str(err.value)


def test_step_metrics_round_trip():
    metrics = rollouts.step_metrics(1, [0.1, 0.5, 1.0], previous={"x": 1})
    assert json.loads(json.dumps(metrics)) == {"step": 1, "steps": [0.1, 0.5, 1.0], "share": 0.5, "previous": {"x": 1}}


def scored(delta: DeltaLakeResource, predictions: dict[int, list[float]], labels: list[float], day: str = "2024-01-01") -> None:
    """Batch scores of each version for the same rows, and the features table's labels for them."""
    from mlops_assets.core.names import BATCH_SCORES, FEATURES

    rows = list(range(len(labels)))
    frame = pl.concat(
        [pl.DataFrame({"_source_row": rows, "model_version": [v] * len(rows), "prediction": p}) for v, p in predictions.items()]
    )
    delta.write_partitions(PIPELINE, BATCH_SCORES, {day: frame}, "run")
    delta.write_partitions(PIPELINE, FEATURES, {day: pl.DataFrame({"_source_row": rows, "y": labels})}, "run")


def test_live_metric_guard_compares_both_versions_on_the_same_labelled_rows(delta):
    guards = RolloutGuardsSpec(min_rows=20, max_prediction_shift=0.6)  # 30 answers a side: KS noise is large
    spec = RolloutSpec(steps=[0.5, 1.0], bake_minutes=0.0, min_requests=0, guards=guards)
    state = start(delta, steps=(0.5, 1.0))
    rng = np.random.default_rng(3)
    y = rng.normal(10, 3, 100)
    log(delta, "champion", 1, rng.normal(10, 3, 30))
    log(delta, "canary", 2, rng.normal(10, 3, 30))
    # without batch scores the guard is not readable, and it does not hold the step back
    signals = rollouts.read_signals(delta, state, spec.guards, "regression", "y")
    live = next(r for r in signals.readings if r.name == "live_metric_regression")
    assert live.value is None and not live.required
    assert rollouts.decide(state, signals, spec).action == "advance"
    # the new version is five minutes worse on every labelled row
    scored(delta, {1: (y + rng.normal(0, 1, 100)).tolist(), 2: (y + 5 + rng.normal(0, 1, 100)).tolist()}, y.tolist())
    verdict = rollouts.decide(state, rollouts.read_signals(delta, state, spec.guards, "regression", "y"), spec)
    assert verdict.action == "rollback" and verdict.guard.name == "live_metric_regression" and verdict.guard.value > 3
