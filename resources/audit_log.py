"""The append-only audit log of model decisions: a Delta table per pipeline.

MLflow keeps no history of aliases (mlflow#2169), so this log is the history:
every promotion, rejection, approval, rollback and alias move, with who, when,
what and why. Rows are only ever appended; rollback reads the champion's
history from here.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl

from mlops_assets.core.names import AUDIT_TABLE
from resources.delta_lake import DeltaLakeResource

# a progressive rollout (promotion.rollout) writes rollout_start, a rollout_step per later step, then
# rollout_complete (with the champion's promote) or rollout_rollback (a guard) or rollout_abort (superseded)
ROLLOUT_ACTIONS = ("rollout_start", "rollout_step", "rollout_complete", "rollout_rollback", "rollout_abort")
ACTIONS = ("promote", "reject", "await_approval", "approve", "rollback", "alias_removed", "erase", "traffic", *ROLLOUT_ACTIONS)
# the platform's own record that a version passed its gates (tags on the version can be edited by anyone)
PASSED_GATES = ("promote", "await_approval", "approve", "rollout_start")
SCHEMA = {
    "event_id": pl.String,
    "at": pl.Datetime("us", "UTC"),
    "pipeline": pl.String,
    "action": pl.String,
    "alias": pl.String,
    "model_version": pl.Int64,
    "from_version": pl.Int64,
    "actor": pl.String,
    "reason": pl.String,
    "failed_gates": pl.String,
    "metrics": pl.String,
    "dagster_run_id": pl.String,
    "mlflow_run_id": pl.String,
}
_clock = threading.Lock()
_last_us = 0


def _now_us() -> int:
    """Strictly increasing microseconds within a process, so rows written together keep their order."""
    global _last_us
    with _clock:
        _last_us = max(_last_us + 1, time.time_ns() // 1000)
        return _last_us


@dataclass(frozen=True)
class AuditEvent:
    action: str
    model_version: int | None  # None for events about data, not a version (erase)
    actor: str
    reason: str
    alias: str | None = None
    from_version: int | None = None
    failed_gates: tuple[str, ...] = ()
    metrics: dict | None = None
    dagster_run_id: str = ""
    mlflow_run_id: str = ""

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown audit action '{self.action}'; known: {', '.join(ACTIONS)}")
        if not self.actor.strip():
            raise ValueError("an audit event needs who did it (actor)")
        if not self.reason.strip():
            raise ValueError("an audit event needs why (reason)")


def record(delta: DeltaLakeResource, pipeline: str, *events: AuditEvent) -> int:
    """Append events (one commit); returns the table's new version."""
    rows = [
        {
            "event_id": uuid.uuid4().hex,
            "at": datetime.fromtimestamp(_now_us() / 1e6, tz=UTC),
            "pipeline": pipeline,
            "action": e.action,
            "alias": e.alias,
            "model_version": e.model_version,
            "from_version": e.from_version,
            "actor": e.actor,
            "reason": e.reason,
            "failed_gates": ",".join(e.failed_gates),
            "metrics": json.dumps(e.metrics or {}, sort_keys=True),
            "dagster_run_id": e.dagster_run_id,
            "mlflow_run_id": e.mlflow_run_id,
        }
        for e in events
    ]
    return delta.append(pipeline, AUDIT_TABLE, pl.DataFrame(rows, schema=SCHEMA), run_id=events[0].dagster_run_id if events else "")


def history(delta: DeltaLakeResource, pipeline: str) -> pl.DataFrame:
    """Every event of a pipeline, oldest first (empty when nothing was decided yet)."""
    lf = delta.scan(pipeline, AUDIT_TABLE)
    if lf is None:
        return pl.DataFrame(schema=SCHEMA)
    return lf.collect().sort("at", "event_id")


def passed_gates(events: pl.DataFrame, version: int) -> bool:
    """Did the gates pass this version, by the audit log (a promotion, approval or wait for approval of it)?"""
    return events.filter((pl.col("model_version") == version) & pl.col("action").is_in(PASSED_GATES)).height > 0


def champion_history(events: pl.DataFrame) -> list[int]:
    """The champion stack: promotions and approvals push a version, rollbacks pop one."""
    stack: list[int] = []
    for row in events.filter(pl.col("alias") == "champion").iter_rows(named=True):
        if row["action"] in ("promote", "approve"):
            stack.append(row["model_version"])
        elif row["action"] == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != row["model_version"]:
                stack.append(row["model_version"])
    return stack
