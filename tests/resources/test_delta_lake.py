"""The streamed partition write on a real local Delta table: one commit for a range whose rows arrive in
chunks, partition values that need escaping, nothing left behind by a write that fails, and concurrent
first writes of a new partition that never stack."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

from resources.delta_lake import DeltaLakeResource


def _rows(partition: str, n: int, writer: str = "w") -> pl.DataFrame:
    return pl.DataFrame({"id": pl.Series(range(n), dtype=pl.UInt32), "writer": [writer] * n, "_partition": [partition] * n})


def _files(root: Path) -> set[Path]:
    return set(root.rglob("*.parquet"))


def test_a_range_streamed_in_chunks_is_one_commit_replacing_only_its_partitions(tmp_path: Path):
    delta = DeltaLakeResource(root=str(tmp_path))
    delta.write_partitions("p", "t", {"keep": _rows("keep", 2).drop("_partition"), "a": _rows("a", 9).drop("_partition")}, "seed")
    odd = "2024-03-03-00:00 a b/c%d é=?#"  # an hourly key and characters a path must escape

    def chunks() -> Iterator[pl.DataFrame]:
        yield pl.concat([_rows("a", 3), _rows(odd, 2)])
        yield _rows("a", 1)  # a partition may span chunks
        yield _rows("b", 0)

    version = delta.write_partition_stream("p", "t", ["a", odd, "b"], chunks(), "run-1")
    table = delta.scan("p", "t").collect()
    assert dict(table.group_by("_partition").len().iter_rows()) == {"keep": 2, "a": 4, odd: 2}
    assert table.schema["id"] == pl.Int32, "stored in Delta's own type (no unsigned integers), as delta-rs writes it"
    history = DeltaTable(delta.table_uri("p", "t")).history(1)[0]
    assert history["version"] == version == 1 and history["dagster_run_id"] == "run-1"
    log = Path(delta.table_uri("p", "t")) / "_delta_log" / f"{version:020d}.json"
    adds = [json.loads(line)["add"] for line in log.read_text().splitlines() if '"add"' in line]
    assert sorted(json.loads(a["stats"])["numRecords"] for a in adds) == [1, 2, 3]
    assert delta.read_partitions("p", "t", [odd]).height == 2


def test_a_write_that_fails_commits_nothing_and_leaves_no_file(tmp_path: Path):
    delta = DeltaLakeResource(root=str(tmp_path))
    delta.write_partition("p", "t", _rows("a", 3).drop("_partition"), "a", "seed")
    before = _files(tmp_path)

    def broken() -> Iterator[pl.DataFrame]:
        yield _rows("a", 5)
        raise OSError("the landed file went away")

    with pytest.raises(OSError, match="went away"):
        delta.write_partition_stream("p", "t", ["a"], broken(), "run")
    with pytest.raises(ValueError, match="column 'extra' .* is not in the table"):
        delta.write_partition_stream("p", "t", ["a"], [_rows("a", 1).with_columns(pl.lit(1).alias("extra"))], "run")
    with pytest.raises(ValueError, match="partition 'z', which this write does not replace"):
        delta.write_partition_stream("p", "t", ["a"], [_rows("z", 1)], "run")
    fraction = _rows("a", 2).with_columns(pl.Series("id", [2.7, 3.0]))  # a strict cast stored 2.7 as 2
    with pytest.raises(ValueError, match="values with a fraction do not fit the table's integer columns: 'id' \\(Float64 -> Int32\\)"):
        delta.write_partition_stream("p", "t", ["a"], [fraction], "run")
    assert _files(tmp_path) == before and delta.version("p", "t") == 0
    assert delta.read_partitions("p", "t", ["a"]).height == 3


def test_a_file_that_fails_on_a_writer_thread_fails_the_write_and_leaves_no_file(tmp_path: Path, monkeypatch):
    """Files are encoded and written on a thread pool: a failure there reaches the caller, and the files
    already written (and those still in flight) are removed, so nothing is committed."""
    import resources.delta_lake as delta_lake

    delta = DeltaLakeResource(root=str(tmp_path))
    delta.write_partition("p", "t", _rows("a", 3).drop("_partition"), "a", "seed")
    before = _files(tmp_path)
    write_table, calls = delta_lake.pq.write_table, []

    def failing_third(table, where, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        write_table(table, where, **kwargs)

    monkeypatch.setattr(delta_lake.pq, "write_table", failing_third)
    chunks = [pl.concat([_rows(k, 2) for k in "abcd"]), pl.concat([_rows(k, 2) for k in "efgh"])]
    with pytest.raises(OSError, match="disk full"):
        delta.write_partition_stream("p", "t", list("abcdefgh"), chunks, "run")
    assert len(calls) >= 3 and _files(tmp_path) == before and delta.version("p", "t") == 0
    assert delta.read_partitions("p", "t", ["a"]).height == 3


def test_concurrent_first_writes_of_a_new_partition_never_stack(tmp_path: Path):
    """delta-rs would rebase a transaction past a concurrent add to the same new partition; the writer
    commits only on the snapshot it read and rebuilds the overwrite when it lost the race."""
    delta = DeltaLakeResource(root=str(tmp_path), commit_retries=8)
    delta.write_partition("p", "t", _rows("seed", 1).drop("_partition"), "seed", "seed")
    writers = ["a", "b", "c"]
    barrier = threading.Barrier(len(writers))
    errors: list[BaseException] = []

    def write(w: str) -> None:
        barrier.wait()
        try:
            delta.write_partition("p", "t", _rows("new", 5, w).drop("_partition"), "new", f"run-{w}")
        except BaseException as err:  # reported below, not swallowed
            errors.append(err)

    threads = [threading.Thread(target=write, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    rows = delta.read_partitions("p", "t", ["new"])
    assert rows.height == 5 and rows["writer"].n_unique() == 1


def test_an_appender_keeps_its_table_open_and_loses_no_rows_to_other_writers_or_a_missing_table(tmp_path: Path):
    """Two appenders (two replicas' prediction logs) and a plain append interleave on one table, one adding a
    column; the table then goes away for a while (a file where it was) and comes back: every append is
    either stored or raises, and the appender stores again once the table is back."""
    delta = DeltaLakeResource(root=str(tmp_path), commit_retries=0)
    first, second = delta.appender("p", "log"), delta.appender("p", "log")
    first.append(_rows("x", 3, "first"))  # creates the table
    second.append(_rows("x", 2, "second"))
    delta.append("p", "log", _rows("x", 1, "plain"))
    first.append(_rows("x", 4, "first").with_columns(pl.lit(1.5).alias("score")), merge_schema=True)
    second.append(_rows("x", 5, "second"), merge_schema=True)  # behind the first's new column: appends, the column null
    table = pl.read_delta(str(tmp_path / "p" / "log"))
    assert table.group_by("writer").len().sort("writer").rows() == [("first", 7), ("plain", 1), ("second", 7)]
    assert table.get_column("score").drop_nulls().to_list() == [1.5] * 4
    assert DeltaTable(str(tmp_path / "p" / "log")).version() == 4  # one commit per append

    folder, aside = tmp_path / "p" / "log", tmp_path / "p" / "log-aside"
    folder.rename(aside)
    folder.write_text("not a table")
    with pytest.raises((DeltaError, OSError)):  # delta-rs says so as one or the other, by where it looked first
        first.append(_rows("x", 1, "lost"), merge_schema=True)
    folder.unlink()
    aside.rename(folder)
    first.append(_rows("x", 6, "back"), merge_schema=True)
    table = pl.read_delta(str(folder))
    assert table.height == 21 and table.filter(pl.col("writer") == "back").height == 6 and "lost" not in table.get_column("writer")


def test_compacting_a_log_table_keeps_every_row_while_replicas_append_and_bounds_its_files_and_log(tmp_path: Path):
    """A prediction log as replicas write it (a small file and a log entry per append), compacted while two
    writers keep appending: no row lost or doubled, the small files rewritten, the table given its properties
    (log entries expire), the expired entries gone at the checkpoint; an appender whose catch-up entries
    expired meanwhile opens the table afresh and stores again."""
    delta = DeltaLakeResource(root=str(tmp_path), commit_retries=5)
    properties = {"delta.logRetentionDuration": "interval 2 seconds", "delta.deletedFileRetentionDuration": "interval 0 seconds"}
    first, second = delta.appender("p", "log", properties), delta.appender("p", "log")
    for i in range(40):
        (second if i % 2 else first).append(_rows("x", 3, f"before-{i}"))
    log_dir = tmp_path / "p" / "log" / "_delta_log"
    assert DeltaTable(str(tmp_path / "p" / "log")).metadata().configuration == properties  # made so by the first append
    assert len(DeltaTable(str(tmp_path / "p" / "log")).file_uris()) == 40
    time.sleep(2.5)  # every entry so far expired: the first appender's handle now points into a log that will lose them

    stop, during, errors = threading.Event(), [], []

    def keep_appending() -> None:
        n = 0
        while not stop.is_set():
            try:
                second.append(_rows("x", 2, f"during-{n}"))
                during.append(n)
            except Exception as err:  # noqa: BLE001 - reported by the assertion below
                errors.append(err)
            n += 1

    writer = threading.Thread(target=keep_appending)
    writer.start()
    try:
        figures = delta.compact("p", "log", properties, retention_hours=0)
    finally:
        stop.set()
        writer.join(60)
    assert not errors and during
    assert figures["files_before"] >= 40 and figures["compacted_files"] >= 40
    # entries go once a checkpoint older than their expiry exists (delta-rs keeps the table readable as of the
    # cutoff): the next compaction, as the replicas' own checkpoints every 100 commits, drops them
    time.sleep(2.5)
    figures = delta.compact("p", "log", properties, retention_hours=0)
    first.append(_rows("x", 1, "after"))  # its handle points at entries that are gone: it reopens
    table = pl.read_delta(str(tmp_path / "p" / "log"))
    expected = sorted([f"before-{i}" for i in range(40)] * 3 + [f"during-{n}" for n in during] * 2 + ["after"])
    assert sorted(table.get_column("writer").to_list()) == expected
    t = DeltaTable(str(tmp_path / "p" / "log"))
    assert len(t.file_uris()) <= 2  # the compacted file, plus the last append
    commits = t.version() + 1  # 40 before, those made during the first compaction, each compaction's own
    assert figures["files_after"] == 1 and commits >= 44
    assert figures["log_entries"] < commits // 2 and len(list(log_dir.glob("*.json"))) < commits // 2  # the expired went

    assert delta.compact("p", "missing", properties, retention_hours=0) == {
        "files_before": 0,
        "files_after": 0,
        "files_removed": 0,
        "log_entries": 0,
        "compacted_files": 0,
    }


@pytest.mark.parametrize(
    ("root", "message"),
    [
        ("s3:/bucket/delta", "'s3:/bucket/delta' is missing a slash after its scheme"),
        ("delta", "'delta' is a relative path: give an absolute path or a URI"),
    ],
)
def test_a_root_that_would_write_somewhere_unintended_is_refused_at_load(root: str, message: str, monkeypatch):
    """Both were written to local folders named after them, wherever the process ran; the landing zone is checked alike."""
    from pydantic import ValidationError

    from resources.landing_zone import LandingZoneResource
    from resources.serving import ServingResource

    for resource in (DeltaLakeResource, LandingZoneResource):
        with pytest.raises(ValidationError, match=message):
            resource(root=root)
    monkeypatch.setenv("HOME", "/srv/someone")
    assert LandingZoneResource(root="~/landing").root == "/srv/someone/landing"
    assert DeltaLakeResource(root="s3://bucket/delta").root == "s3://bucket/delta"
    with pytest.raises(ValidationError, match="storage_options: AWS_S3_ALLOW_UNSAFE_RENAME=true"):
        DeltaLakeResource(root="s3://bucket/delta", storage_options={"aws_s3_allow_unsafe_rename": "true"})
    with pytest.raises(ValidationError, match="http_port"):
        ServingResource(http_port=70000)
