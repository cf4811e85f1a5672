"""The prediction log never blocks or fails a request: overflow and storage errors are counted instead."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from mlops_assets.core.names import PREDICTION_LOG
from resources.delta_lake import DeltaLakeResource
from serving import prediction_log
from serving.prediction_log import Answered, PredictionLogger, log_rows


def _rows(request_id: str, n: int) -> pl.DataFrame:
    features = pl.DataFrame({"dep_delay": [float(i) for i in range(n)], "carrier_code": pl.Series([1] * n, dtype=pl.Int16)})
    return log_rows(
        features=features,
        result={"predictions": [float(i) / 2 for i in range(n)]},
        pipeline="flights",
        model_version=3,
        role="champion",
        served=True,
        request_id=request_id,
        received_at=time.time() - 0.01,
    )


def test_full_queue_counts_overflow_and_flush_writes_the_rest(tmp_path, monkeypatch):
    delta = DeltaLakeResource(root=str(tmp_path / "delta"))
    logger = PredictionLogger(delta, "flights", max_rows=5, flush_seconds=3600, flush_rows=100)  # flushed when asked only
    try:
        assert logger.log(_rows("a", 2)) and logger.log(_rows("b", 3))
        with monkeypatch.context() as m:  # full: dropped at once, nothing waits for room (no clock: no flaky bound)
            for waits in ("put", "put_nowait"):
                m.setattr(logger._queue, waits, lambda *a, **k: pytest.fail("a request waited on the full queue"))
            m.setattr(prediction_log.time, "sleep", lambda *a, **k: pytest.fail("a request slept on the full queue"))
            assert not logger.log(_rows("c", 1))
        assert logger.stats()["overflow_rows"] == 1
        assert logger.flush() == 5
        assert logger.log(_rows("d", 4))  # room again after the flush
        assert logger.flush() == 4
    finally:
        logger.close()
    table = delta.scan("flights", PREDICTION_LOG).collect()  # type: ignore[union-attr]
    assert sorted(set(table["request_id"])) == ["a", "b", "d"]
    assert table.filter(pl.col("request_id") == "b").sort("record")["prediction"].to_list() == [0.0, 0.5, 1.0]
    assert set(table["model_version"]) == {3} and (table["latency_ms"] >= 10).all()
    assert table.schema["carrier_code"] == pl.Int16  # features keep their types for monitoring


def _answered(requests: list[tuple[str, int]], result: dict | None = None) -> Answered:
    n = sum(rows for _, rows in requests)
    features = pl.DataFrame({"dep_delay": [float(i) for i in range(n)], "carrier_code": pl.Series([1] * n, dtype=pl.Int16)})
    received = time.time() - 0.01
    return Answered(
        features,
        result if result is not None else {"predictions": [float(i) / 2 for i in range(n)]},
        "flights",
        3,
        tuple((rid, "champion", True, received, rows) for rid, rows in requests),
        time.time(),
    )


def test_answered_requests_become_the_same_rows_in_the_writer_thread_within_the_same_bound(tmp_path, monkeypatch):
    delta = DeltaLakeResource(root=str(tmp_path / "delta"))
    logger = PredictionLogger(delta, "flights", max_rows=8, flush_seconds=3600, flush_rows=100)
    built_in: list[str] = []
    build = prediction_log.answered_rows

    def spy(batches):
        built_in.append(threading.current_thread().name)
        return build(batches)

    monkeypatch.setattr(prediction_log, "answered_rows", spy)
    try:
        assert logger.log_answered(_answered([("a", 2), ("b", 1)]))  # two requests answered as one batch
        assert logger.log_answered(_answered([("c", 1)], result={"labels": ["x"]}))  # cannot be built: lost alone
        assert logger.log_answered(_answered([("d", 3)]))
        assert not logger.log_answered(_answered([("e", 2)]))  # 7 queued, 2 more would pass the bound: refused
        assert logger.stats()["overflow_rows"] == 2
        assert built_in == []  # nothing is built on the caller's thread
        logger.close()  # the writer thread flushes on close
    finally:
        logger.close()
    assert built_in and all(name.startswith("prediction-log-") for name in built_in)
    stats = logger.stats()
    assert stats["lost_rows"] == 1 and "predictions" in logger.last_error and stats["queued_rows"] == 0
    table = delta.scan("flights", PREDICTION_LOG).collect().sort("request_id", "record")  # type: ignore[union-attr]
    assert table["request_id"].to_list() == ["a", "a", "b", "d", "d", "d"]
    assert table["record"].to_list() == [0, 1, 0, 0, 1, 2]
    assert table["prediction"].to_list() == [0.0, 0.5, 1.0, 0.0, 0.5, 1.0]
    assert (table["latency_ms"] >= 10).all() and set(table["model_version"]) == {3}
    # the same columns and types as the rows of one request built at once
    one = _rows("z", 1)
    assert table.select(one.columns).schema == one.schema


def test_storage_failure_is_counted_and_logging_goes_on(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the table root should be")
    logger = PredictionLogger(DeltaLakeResource(root=str(blocker), commit_retries=0), "flights", max_rows=100, flush_seconds=3600)
    try:
        assert logger.log(_rows("a", 2))
        assert logger.flush() == 0
        stats = logger.stats()
        assert stats["write_errors"] == 1 and stats["logged_rows"] == 0 and stats["last_error"]
        assert stats["lost_rows"] == 2  # no spill folder: the loss is counted, not hidden
        assert logger.log(_rows("b", 2))  # requests keep being accepted
    finally:
        logger.close()


def test_background_thread_flushes_without_being_asked(tmp_path):
    delta = DeltaLakeResource(root=str(tmp_path / "delta"))
    logger = PredictionLogger(delta, "flights", max_rows=100, flush_seconds=0.1)
    try:
        logger.log(_rows("bg", 2))
        deadline = time.time() + 20
        while logger.stats()["logged_rows"] < 2 and time.time() < deadline:
            time.sleep(0.05)
        assert logger.stats()["logged_rows"] == 2
    finally:
        logger.close()


def test_a_flush_ends_under_steady_traffic(tmp_path):
    """A flush writes what was queued when it started; rows arriving meanwhile wait for the next one.
    (Draining until empty never ended under load: back-to-back commits of a few rows each.)"""
    delta = DeltaLakeResource(root=str(tmp_path / "delta"))
    logger = PredictionLogger(delta, "flights", max_rows=100_000, flush_seconds=3600, batch_rows=4)
    for i in range(10):
        logger.log(_rows(f"q{i}", 1))
    stop = threading.Event()

    def traffic():  # one row a millisecond, for at most about 3 s
        for i in range(3000):
            if stop.is_set():
                return
            logger.log(_rows(f"t{i}", 1))
            time.sleep(0.001)

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        written = logger.flush()
        version = delta.version("flights", PREDICTION_LOG)
    finally:
        stop.set()
        sender.join()
        logger.close()
    assert 10 <= written <= 10 + 3  # the queued rows, in batches of 4 (the last batch may take up to 3 newcomers)
    assert version == 2  # three commits: 4 + 4 + 4 rows


class FlakyStore(DeltaLakeResource):
    """A real Delta store whose appends fail while `down` is set (the unit's edge: storage trouble)."""

    def appender(self, pipeline, table, configuration=None):
        appender = super().appender(pipeline, table, configuration)
        real = appender.append

        def append(*args, **kwargs):
            if FLAKY["down"]:
                raise OSError("store unreachable")
            return real(*args, **kwargs)

        appender.append = append
        return appender


FLAKY = {"down": False}


def test_rows_the_store_refuses_are_spilled_and_written_when_it_is_back(tmp_path, monkeypatch):
    monkeypatch.setitem(FLAKY, "down", True)
    delta = FlakyStore(root=str(tmp_path / "delta"))
    logger = PredictionLogger(delta, "flights", max_rows=1000, flush_seconds=3600, spill_dir=tmp_path / "spill")
    try:
        for i in range(5):
            assert logger.log(_rows(f"s{i}", 3))
            logger.flush()
        stats = logger.stats()
        assert stats["spilled_rows"] == 15 and stats["lost_rows"] == 0 and stats["spill_files"] >= 1 and stats["logged_rows"] == 0
        FLAKY["down"] = False
        logger.log(_rows("after", 2))
        assert logger.flush() == 17
        assert logger.stats()["spill_files"] == 0 and logger.stats()["respilled_rows"] == 15
    finally:
        logger.close()
    table = delta.scan("flights", PREDICTION_LOG).collect()
    assert table.height == 17 and sorted(set(table["request_id"])) == ["after", "s0", "s1", "s2", "s3", "s4"]


def test_a_replica_that_goes_away_spills_its_queue_and_the_next_one_writes_it(tmp_path, monkeypatch):
    monkeypatch.setitem(FLAKY, "down", True)
    spill = tmp_path / "spill"
    first = PredictionLogger(FlakyStore(root=str(tmp_path / "delta")), "flights", max_rows=1000, flush_seconds=3600, spill_dir=spill)
    for i in range(3):
        first.log(_rows(f"q{i}", 2))
    first.close()  # graceful shutdown while the store is down: the queue goes to the spill folder
    assert first.stats()["spilled_rows"] == 6 and first.stats()["queued_rows"] == 0
    FLAKY["down"] = False
    delta = DeltaLakeResource(root=str(tmp_path / "delta"))
    second = PredictionLogger(delta, "flights", max_rows=1000, flush_seconds=3600, spill_dir=spill)
    try:
        deadline = time.time() + 20
        while second.stats()["respilled_rows"] < 6 and time.time() < deadline:  # drained as it starts
            time.sleep(0.05)
    finally:
        second.close()
    assert delta.scan("flights", PREDICTION_LOG).select(pl.len()).collect().item() == 6
    assert not list(spill.iterdir())


def test_a_queue_half_full_is_flushed_before_its_time_so_large_requests_do_not_overflow(tmp_path):
    """Requests of many rows fill the queue faster than a flush every flush_seconds empties it: the writer
    flushes as soon as the queue is half full, so a steady stream of them is logged whole."""
    delta = DeltaLakeResource(root=str(tmp_path / "delta"))
    logger = PredictionLogger(delta, "flights", max_rows=40, flush_seconds=3600)
    try:
        sent = 0
        for i in range(30):  # 300 rows through a queue of 40, never waiting for a timed flush
            deadline = time.time() + 20
            while not logger.log(_rows(f"big{i}", 10)) and time.time() < deadline:
                time.sleep(0.01)  # full for a moment: the early flush is under way
            sent += 10
        deadline = time.time() + 20
        while logger.stats()["logged_rows"] < 280 and time.time() < deadline:
            time.sleep(0.05)
        assert logger.stats()["logged_rows"] >= 280  # the last few rows may wait for the next half-full mark
    finally:
        logger.close()
    assert delta.scan("flights", PREDICTION_LOG).select(pl.len()).collect().item() == sent


def test_a_spill_file_the_store_never_takes_does_not_hold_back_the_ones_after_it(tmp_path):
    """Spilled batches were appended oldest first until one was refused: a batch the table will never take (a
    column whose type cannot merge) kept every later spilled batch out of the log, for good."""
    delta = DeltaLakeResource(root=str(tmp_path / "delta"))
    logger = PredictionLogger(delta, "flights", max_rows=1000, flush_seconds=3600, spill_dir=tmp_path / "spill")

    def rows(request_id: str, codes: pl.Series) -> pl.DataFrame:
        features = pl.DataFrame({"dep_delay": [1.0] * codes.len(), "carrier_code": codes})
        result = {"predictions": [0.5] * codes.len()}
        return log_rows(
            features=features,
            result=result,
            pipeline="flights",
            model_version=3,
            role="champion",
            served=True,
            request_id=request_id,
            received_at=time.time(),
        )

    try:
        logger.log(rows("first", pl.Series([1, 2], dtype=pl.Int16)))
        assert logger.flush() == 2
        logger.log(rows("never-takes", pl.Series(["x", "y"], dtype=pl.String)))  # spilled, and refused for good
        logger.flush()
        append = logger._appender.append
        logger._appender.append = lambda *a, **k: (_ for _ in ()).throw(OSError("store down"))
        logger.log(rows("spilled-in-an-outage", pl.Series([3, 4], dtype=pl.Int16)))
        logger.flush()
        logger._appender.append = append  # the store is back
        logger.log(rows("later", pl.Series([5], dtype=pl.Int16)))
        logger.flush()
    finally:
        logger.close()
    logged = set(delta.scan("flights", PREDICTION_LOG).collect()["request_id"])
    assert logged == {"first", "spilled-in-an-outage", "later"}
    assert len(logger.spill_files()) == 1 and logger.respilled_rows == 2  # the refused one stays for a person


def _spill_while_the_store_is_down(spill: Path, delta_root: Path, requests: int) -> None:
    """A replica that went away while the store was down: each request's rows in a spill file of their own."""
    FLAKY["down"] = True
    gone = PredictionLogger(FlakyStore(root=str(delta_root)), "flights", max_rows=1000, flush_seconds=3600, spill_dir=spill)
    try:
        for i in range(requests):
            gone.log(_rows(f"spilled{i}", 2))
            gone.flush()
    finally:
        gone.close()
        FLAKY["down"] = False
    assert len(list(spill.glob("*.parquet"))) == requests


def test_two_replicas_draining_one_spill_folder_append_each_spilled_batch_once(tmp_path, monkeypatch):
    """Replicas share the spill folder, and each claims a file by an atomic rename before appending it: a replica
    that lists the folder while another is part-way through a batch leaves that batch alone, so no row is logged
    twice (which would skew serving drift, the live metric and the rollout's request counts)."""
    monkeypatch.setitem(FLAKY, "down", False)
    spill, root = tmp_path / "spill", tmp_path / "delta"
    spill.mkdir()
    first = PredictionLogger(DeltaLakeResource(root=str(root)), "flights", max_rows=1000, flush_seconds=3600, spill_dir=spill)
    second = PredictionLogger(DeltaLakeResource(root=str(root)), "flights", max_rows=1000, flush_seconds=3600, spill_dir=spill)
    # their writer threads found the folder empty as they started; stopped, so the drains below are the only ones
    first.close()
    second.close()
    _spill_while_the_store_is_down(spill, root, requests=4)

    append = first._appender.append
    meanwhile: list[tuple[int, int]] = []  # (files claimed, rows the second replica appended)

    def second_drains_meanwhile(*args, **kwargs):  # the first replica's first append, before it commits
        first._appender.append = append
        meanwhile.append((len(list(spill.glob("*.draining"))), second.flush()))
        return append(*args, **kwargs)

    first._appender.append = second_drains_meanwhile
    assert first.flush() == 2
    table = DeltaLakeResource(root=str(root)).scan("flights", PREDICTION_LOG).collect()  # type: ignore[union-attr]
    assert table.height == 8 and table.group_by("request_id", "record").len()["len"].max() == 1
    assert sorted(set(table["request_id"])) == [f"spilled{i}" for i in range(4)]
    assert first.respilled_rows + second.respilled_rows == 8
    assert meanwhile == [(1, 6)]  # the batch the first replica had claimed, and the other three files
    assert not list(spill.iterdir())


def test_a_dead_replicas_claimed_spill_file_is_reclaimed_and_a_live_ones_is_left_alone(tmp_path):
    """A replica killed while appending a spill file leaves it renamed `<file>.<pid>.draining`: once that process
    is gone, the next replica puts the file back and appends its rows (else they stay out of the log for good,
    counted nowhere). A file a live replica is draining is its own to finish."""
    spill = tmp_path / "spill"
    spill.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _rows("dead", 3).write_parquet(spill / f"{time.time_ns()}-aaaaaaaa.parquet.{dead.pid}.draining")
    live = spill / f"{time.time_ns()}-bbbbbbbb.parquet.{os.getpid()}.draining"
    _rows("live", 2).write_parquet(live)
    delta = DeltaLakeResource(root=str(tmp_path / "delta"))
    logger = PredictionLogger(delta, "flights", max_rows=1000, flush_seconds=3600, spill_dir=spill)
    try:
        logger.flush()  # whichever drains first, the writer thread starting or this flush: claimed, once
    finally:
        logger.close()
    table = delta.scan("flights", PREDICTION_LOG).collect()  # type: ignore[union-attr]
    assert table["request_id"].to_list() == ["dead"] * 3 and logger.respilled_rows == 3
    assert list(spill.iterdir()) == [live]
