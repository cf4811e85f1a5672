"""The prediction log: every served (and shadow) prediction, appended to Delta off the request path.

Requests put rows on a bounded in-memory queue and never wait for storage: a
background thread drains it every `flush_seconds` (sooner once the queue is half
full) and appends batches to `<pipeline>/prediction_log` through a table kept open.
A batch the store refuses is not lost: it is spilled to a Parquet file in the
spill folder and appended again on later flushes (and by the next replica that
starts, if this one goes away first); a replica flushes its queue on graceful
shutdown. What is still dropped by design is counted: a full queue under
overload (`overflow_rows`), and a batch that could not even be spilled
(`lost_rows`, a full or read-only disk), so a slow or broken store never costs a
request.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from mlops_assets.core.names import APPENDED_AT, PREDICTION_LOG, PREDICTION_LOG_PROPERTIES
from resources.delta_lake import DeltaLakeResource
from serving.replica_files import process_alive

log = logging.getLogger(__name__)


# rows per append: a flush writes what queued since the last one in as few commits as this allows. At 5,000,
# 10,000-row requests took a commit each, and the log's appends cost about a third of the CPU of answering them
# (34 against 3-6 ms a request in one commit per flush, timed by hand); a batch is a copy of queued rows, bounded
# by the queue's own max_rows
BATCH_ROWS = 100_000


class PredictionLogger:
    def __init__(
        self,
        delta: DeltaLakeResource,
        pipeline: str,
        max_rows: int,
        flush_seconds: float,
        batch_rows: int = BATCH_ROWS,
        spill_dir: str | Path | None = None,
        flush_rows: int | None = None,
    ):
        self._appender = delta.appender(pipeline, PREDICTION_LOG, PREDICTION_LOG_PROPERTIES)
        self.spill_dir = Path(spill_dir) if spill_dir else None
        self.pipeline = pipeline
        self.max_rows = max_rows
        self.flush_seconds = flush_seconds
        self.batch_rows = batch_rows
        # queued rows that start a flush before flush_seconds: large requests fill the queue faster than a
        # timed flush empties it (10,000-row requests at a dozen a second overflowed 100,000 rows in 2 s)
        self.flush_rows = max_rows // 2 if flush_rows is None else flush_rows
        # rows, and the frame, or the answered requests the writer thread turns into rows (`log_answered`)
        self._queue: queue.Queue[tuple[int, pl.DataFrame | Answered]] = queue.Queue()
        self._queued_rows = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.logged_rows = 0
        self.overflow_rows = 0
        self.write_errors = 0
        self.spilled_rows = 0
        self.respilled_rows = 0  # appended later from the spill folder
        self.lost_rows = 0
        self.last_error = ""
        self._thread = threading.Thread(target=self._run, name=f"prediction-log-{pipeline}", daemon=True)
        self._thread.start()

    def log(self, frame: pl.DataFrame) -> bool:
        """Queue rows without blocking; False (and counted) when the queue is full."""
        return self._put(frame.height, frame)

    def log_answered(self, answered: Answered) -> bool:
        """Queue the rows of answered requests; the writer thread builds them (`answered_rows`), many at once."""
        return self._put(answered.rows, answered)

    def _put(self, rows: int, item: pl.DataFrame | Answered) -> bool:
        with self._lock:
            if self._queued_rows + rows > self.max_rows or self._stop.is_set():
                self.overflow_rows += rows
                return False
            self._queued_rows += rows
            early = self._queued_rows >= self.flush_rows
        self._queue.put_nowait((rows, item))
        if early:
            self._wake.set()
        return True

    def _drain(self) -> list[pl.DataFrame]:
        frames, answered, rows = [], [], 0
        while rows < self.batch_rows:
            try:
                height, item = self._queue.get_nowait()
            except queue.Empty:
                break
            rows += height
            (frames if isinstance(item, pl.DataFrame) else answered).append(item)
        if answered:
            frames.extend(self._rows_of(answered))
        with self._lock:
            self._queued_rows -= rows
        return frames

    def _rows_of(self, answered: list[Answered]) -> list[pl.DataFrame]:
        """The rows of the answered batches, built together; when that fails, batch by batch, so only a batch
        that cannot be built is lost (counted and told, never raised into the writer thread)."""
        try:
            return [answered_rows(answered)]
        except Exception as err:
            if len(answered) > 1:
                return [frame for one in answered for frame in self._rows_of([one])]
            self.lost_rows += answered[0].rows
            self.last_error = f"{type(err).__name__}: {err}"
            log.exception("prediction log: %d rows could not be built and are lost", answered[0].rows)
            return []

    def flush(self) -> int:
        """Write the rows queued when the flush starts (in batches of `batch_rows`); returns rows written.

        Rows queued meanwhile wait for the next flush: draining until the queue is empty never ends
        under steady traffic, and turned the log into back-to-back commits of a few hundred rows
        (about 6 a second during `mlops bench serving`).
        """
        with self._lock:
            pending = self._queued_rows
        written = 0
        while pending > 0 and (frames := self._drain()):
            batch = pl.concat(frames, how="diagonal_relaxed")
            pending -= batch.height
            if self._append(batch):
                written += batch.height
            else:
                self._spill(batch)
        return written + self._drain_spill()

    def _append(self, batch: pl.DataFrame) -> bool:
        # when the rows reach the log, which serving drift reads by: a row answered earlier may be committed later
        # (another replica's next flush, a spilled batch appended again), and a watermark on the answer time missed it
        appended = pl.lit(datetime.now(UTC), dtype=pl.Datetime("us", "UTC")).alias(APPENDED_AT)
        try:
            self._appender.append(batch.with_columns(appended), merge_schema=True)  # new subject or feature columns
        except Exception as err:  # storage trouble must not kill the logger: the batch is spilled, counted and kept visible
            self.write_errors += 1
            self.last_error = f"{type(err).__name__}: {err}"[:500]
            return False
        self.logged_rows += batch.height
        return True

    def _spill(self, batch: pl.DataFrame) -> None:
        if self.spill_dir is None:
            self.lost_rows += batch.height
            log.error("prediction log append failed (%d rows lost, no spill folder): %s", batch.height, self.last_error)
            return
        try:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
            partial = self.spill_dir / f".{name}.tmp"
            batch.write_parquet(partial)
            partial.rename(self.spill_dir / name)  # complete files only: a reader never sees half a batch
        except OSError as err:
            self.lost_rows += batch.height
            log.error("prediction log: %d rows lost, neither stored nor spilled (%s; spill: %s)", batch.height, self.last_error, err)
            return
        self.spilled_rows += batch.height
        log.warning("prediction log append failed; %d rows spilled to %s: %s", batch.height, self.spill_dir, self.last_error)

    def spill_files(self) -> list[Path]:
        if self.spill_dir is None or not self.spill_dir.is_dir():
            return []
        return sorted(self.spill_dir.glob("*.parquet"))

    def _drain_spill(self) -> int:
        """Append spilled batches, oldest first, until the store refuses two in a row (it is down: the next flush tries
        again). One refused file alone (a batch the table will never take) stays for a person to look at and no longer
        holds back the files after it. Each file is claimed by an atomic rename first, so replicas sharing the folder
        never append one batch twice."""
        written, refused = 0, 0
        try:
            self._reclaim()
            files = self.spill_files()
        except OSError as err:  # the spill folder itself is in trouble: try again on the next flush
            log.error("prediction log: cannot read the spill folder %s: %s", self.spill_dir, err)
            return 0
        for path in files:
            claimed = path.with_name(f"{path.name}.{os.getpid()}.draining")
            try:
                path.rename(claimed)
            except OSError:
                continue  # another replica took it
            try:
                batch = pl.read_parquet(claimed)
            except Exception as err:  # an unreadable spill file stays (claimed) for a person to look at
                log.error("prediction log: spill file %s cannot be read: %s", claimed, err)
                continue
            if not self._append(batch):
                try:
                    claimed.rename(path)  # back for the next flush
                except OSError as err:
                    log.error("prediction log: cannot return %s to the spill folder: %s", claimed, err)
                refused += 1
                if refused >= 2:
                    break
                continue
            refused = 0
            claimed.unlink(missing_ok=True)
            self.respilled_rows += batch.height
            written += batch.height
        return written

    def _run(self) -> None:
        self._drain_spill()  # what an earlier replica spilled before it went away
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)  # every flush_seconds, or sooner when the queue is half full
            self._wake.clear()
            if self._stop.is_set():
                break
            self.flush()
        while self._queued_rows:  # graceful shutdown: everything accepted is written or spilled
            self.flush()

    def _reclaim(self) -> None:
        """Spill files a replica was draining when it died go back to the folder (checked on every flush)."""
        if self.spill_dir is None or not self.spill_dir.is_dir():
            return
        for claimed in self.spill_dir.glob("*.draining"):
            pid = int(claimed.suffixes[-2].lstrip(".")) if len(claimed.suffixes) >= 2 and claimed.suffixes[-2][1:].isdigit() else 0
            if pid and process_alive(pid):
                continue
            try:
                claimed.rename(claimed.with_name(claimed.name.split(".parquet")[0] + ".parquet"))
            except FileNotFoundError:
                pass  # another replica reclaimed it first

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive() or self._stop.is_set()

    def stats(self) -> dict:
        return {
            "logged_rows": self.logged_rows,
            "queued_rows": self._queued_rows,
            "overflow_rows": self.overflow_rows,
            "write_errors": self.write_errors,
            "spilled_rows": self.spilled_rows,
            "respilled_rows": self.respilled_rows,
            "spill_files": len(self.spill_files()),
            "lost_rows": self.lost_rows,
            "last_error": self.last_error,
        }


@dataclass(frozen=True)
class Answered:
    """Requests answered together, kept as they were answered until the log's writer thread turns them
    into rows: the rows of every batch drained in one flush are built as one frame, off the request path."""

    columns: pl.DataFrame  # the logged columns of every record (features, subjects), requests in order
    result: dict  # the model's answer for those records
    pipeline: str
    model_version: int
    requests: tuple[tuple[str, str, bool, float, int], ...]  # (request_id, role, served, received_at, records)
    answered_at: float

    @property
    def rows(self) -> int:
        return self.columns.height


def _prediction_values(result: dict) -> tuple[np.ndarray, list | None]:
    """The logged prediction (a class's probability for classifiers) and label of each record."""
    preds = result["predictions"]
    numeric = result.get("probabilities") is None or (len(preds) > 0 and isinstance(preds[0], float))
    prediction = np.asarray(preds, dtype=np.float64) if numeric else np.asarray([max(p) for p in result["probabilities"]], dtype=np.float64)
    labels = result.get("labels")
    return prediction, None if labels is None else [None if lab is None else str(lab) for lab in labels]


def answered_rows(batches: list[Answered]) -> pl.DataFrame:
    """One prediction-log row per record of every batch: metadata columns, the prediction, then the logged
    columns. Built from whole columns (numpy and one list per column): about 0.04 ms a request in a
    flush of a hundred, where a frame per request cost about 1 ms."""
    requests = [r for b in batches for r in b.requests]
    sizes = np.asarray([r[4] for r in requests], dtype=np.int64)
    answered = np.repeat([b.answered_at for b in batches], [len(b.requests) for b in batches])
    values = [_prediction_values(b.result) for b in batches]
    labels = [label for (_, lab), b in zip(values, batches) for label in (lab if lab is not None else [None] * b.rows)]
    logged_at = np.repeat((answered * 1e6).astype(np.int64), sizes)
    meta = pl.DataFrame(
        {
            "request_id": pl.Series(np.repeat([r[0] for r in requests], sizes).tolist(), dtype=pl.String),
            "record": np.concatenate([np.arange(n, dtype=np.int32) for n in sizes]) if len(sizes) else np.zeros(0, np.int32),
            "logged_at": pl.Series(logged_at, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
            "pipeline": pl.Series(np.repeat([b.pipeline for b in batches], [b.rows for b in batches]).tolist(), dtype=pl.String),
            "model_version": pl.Series(np.repeat([b.model_version for b in batches], [b.rows for b in batches]), dtype=pl.Int64),
            "role": pl.Series(np.repeat([r[1] for r in requests], sizes).tolist(), dtype=pl.String),
            "served": pl.Series(np.repeat([r[2] for r in requests], sizes), dtype=pl.Boolean),
            "latency_ms": pl.Series(np.repeat([(a - r[3]) * 1000.0 for a, r in zip(answered, requests)], sizes), dtype=pl.Float64),
            "prediction": pl.Series(np.concatenate([v[0] for v in values]) if values else np.zeros(0), dtype=pl.Float64),
            "label": pl.Series(labels, dtype=pl.String),
        }
    )
    return pl.concat([meta, _stacked([b.columns for b in batches])], how="horizontal")


def _stacked(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """The logged columns of many requests: stacked as they are (the usual case: one feature code, one schema),
    else aligned by name and type. Aligning 3,000 one-row frames took 53 ms a flush, stacking them 5.5 (by hand)."""
    if len(frames) == 1:
        return frames[0]
    try:
        return pl.concat(frames, how="vertical")
    except (pl.exceptions.SchemaError, pl.exceptions.ShapeError, pl.exceptions.ColumnNotFoundError):
        return pl.concat(frames, how="diagonal_relaxed")


def log_rows(
    *,
    features: pl.DataFrame,
    result: dict,
    pipeline: str,
    model_version: int,
    role: str,
    served: bool,
    request_id: str,
    received_at: float,
) -> pl.DataFrame:
    """The rows of one request answered now: `answered_rows` of a single batch."""
    request = ((request_id, role, served, received_at, features.height),)
    return answered_rows([Answered(features, result, pipeline, model_version, request, time.time())])
