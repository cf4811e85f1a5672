"""One promotion decision per pipeline at a time, whatever the registry backend: a lease in Delta.

The MLflow registry has no compare-and-set on aliases, and only an embedded SQLite store can
be locked by a file beside it; a Postgres-backed or remote tracking server cannot. Every
process that moves an alias (promotion runs, rollout runs, `mlops approve` / `rollback`)
shares the Delta root, so the lease lives there: a one-row table per pipeline, taken by an
overwrite committed on the snapshot that showed it free. Delta's optimistic concurrency
refuses the second of two such commits (a concurrent transaction deleted the row it read),
so exactly one taker wins; a holder that died is overtaken once its lease expires. A live
holder renews its lease while it holds it (a judgement reading a very large prediction log may
take longer than the TTL), and a block whose lease was overtaken all the same (its process was
paused past the TTL) fails when it ends, naming the new holder.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa
from deltalake import write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError

from mlops_assets.core.names import PROMOTION_LOCK
from resources.delta_lake import DeltaLakeResource

log = logging.getLogger(__name__)

WAIT_S = 120.0  # how long a decision waits for the lease before it gives up, naming the holder
TTL_S = 120.0  # a lease older than this is overtaken (its holder died); decisions take seconds


class LeaseHeld(TimeoutError):
    """Another decision held the pipeline's promotion lease for longer than the wait allowed."""


class LeaseLost(RuntimeError):
    """The lease expired while its block ran and another decision took it: the two may have overlapped."""


def _row(holder: str, expires_at: float) -> pa.Table:
    return pa.table({"holder": pa.array([holder], pa.string()), "expires_at": pa.array([expires_at], pa.float64())})


def _try_take(delta: DeltaLakeResource, pipeline: str, holder: str, ttl_s: float) -> str | None:
    """Take the lease; returns None when taken, else who holds it."""
    table = delta.table(pipeline, PROMOTION_LOCK)
    if table is None:
        # created free, never taken by the creation itself: two racing creators may both commit
        # (the second as an append), which only leaves two free rows for the overwrite below
        try:
            write_deltalake(
                delta.table_uri(pipeline, PROMOTION_LOCK), _row("", 0.0), mode="error", storage_options=delta.resolved_storage_options()
            )
        except CommitFailedError:
            pass
        except DeltaError:
            if delta.table(pipeline, PROMOTION_LOCK) is None:
                raise  # no creator won a race: the table cannot be made (a root that is a file, no permission)
        table = delta.table(pipeline, PROMOTION_LOCK)
        if table is None:
            return "nobody yet (the lease table is being created)"
    now = time.time()
    held = [r["holder"] for r in table.to_pyarrow_table().to_pylist() if r["holder"] not in ("", holder) and r["expires_at"] > now]
    if held:
        return held[0]
    try:
        # committed on the snapshot read above: a concurrent taker's commit makes this one fail
        write_deltalake(table, _row(holder, now + ttl_s), mode="overwrite")
    except CommitFailedError:
        return "a concurrent taker"
    return None


def _while_ours(delta: DeltaLakeResource, pipeline: str, holder: str, row) -> str | None:
    """Overwrite the lease with `row()` while `holder` holds it (a renewal, a release); returns who holds it
    instead when it was overtaken (None: written)."""
    table = delta.table(pipeline, PROMOTION_LOCK)
    holders = [r["holder"] for r in table.to_pyarrow_table().to_pylist()] if table is not None else []
    if holders != [holder]:
        return next((h for h in holders if h), "nobody (the lease was released)")
    try:
        write_deltalake(table, row(), mode="overwrite")
    except CommitFailedError:
        return _while_ours(delta, pipeline, holder, row)  # someone wrote meanwhile: read who
    return None


class _Renewal(threading.Thread):
    """Renews the lease every quarter TTL until stopped; notes who took it if it was overtaken."""

    def __init__(self, delta: DeltaLakeResource, pipeline: str, holder: str, ttl_s: float) -> None:
        super().__init__(name=f"promotion-lease-{pipeline}", daemon=True)
        self.delta, self.pipeline, self.holder, self.ttl_s = delta, pipeline, holder, ttl_s
        self.stopped = threading.Event()
        self.taken_by: str | None = None

    def run(self) -> None:
        while not self.stopped.wait(self.ttl_s / 4):
            try:
                self.taken_by = _while_ours(self.delta, self.pipeline, self.holder, lambda: _row(self.holder, time.time() + self.ttl_s))
            except Exception as err:  # noqa: BLE001 - a storage hiccup: the next renewal tries again before the TTL runs out
                log.warning("%s: renewing the promotion lease failed (%s); trying again", self.pipeline, err)
                continue
            if self.taken_by is not None:
                return


@contextmanager
def promotion_lease(delta: DeltaLakeResource, pipeline: str, wait_s: float | None = None, ttl_s: float | None = None) -> Iterator[str]:
    """Hold the pipeline's promotion lease for the block, renewed every quarter TTL while it runs."""
    wait_s = WAIT_S if wait_s is None else wait_s
    ttl_s = TTL_S if ttl_s is None else ttl_s
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_s
    while (held_by := _try_take(delta, pipeline, holder, ttl_s)) is not None:
        if time.monotonic() > deadline:
            raise LeaseHeld(f"{pipeline}: the promotion lease was held by {held_by} for more than {wait_s:g}s; try again")
        time.sleep(random.uniform(0.02, 0.1))
    renewal = _Renewal(delta, pipeline, holder, ttl_s)
    renewal.start()
    try:
        yield holder
    finally:
        renewal.stopped.set()
        renewal.join()
        taken_by = _while_ours(delta, pipeline, holder, lambda: _row("", 0.0))  # a release; not ours: the decisions overlapped
        renewal.taken_by = renewal.taken_by or taken_by
    if renewal.taken_by is not None:
        raise LeaseLost(
            f"{pipeline}: the promotion lease expired while this decision ran ({ttl_s:g}s without a renewal) and "
            f"{renewal.taken_by} took it; check the audit log (`mlops history {pipeline}`) for overlapping decisions"
        )
