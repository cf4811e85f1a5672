"""Validating a backfill's files together gives, file by file, what pandera gives for each file alone.

`validate_files` runs the compiled checks once over all the files' rows; keys must stay unique
within each file only (the same key in two files is two partitions' rows), extra problems
(rows of another partition) stay with their file, files landed with other column types keep
their own values as landed, and a clean file or an all-bad file comes back whole.
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from mlops_assets.core.names import SOURCE_ROW
from mlops_assets.core.records import conform
from mlops_assets.core.validation import validate, validate_files
from tests.support.validation import SCHEMA, _row


def _file(rows: list[dict], name: str, **casts) -> object:
    frame = pl.DataFrame(rows).with_columns(pl.col("when").cast(pl.Datetime("us", "UTC")))
    if casts:
        frame = frame.with_columns(*[pl.col(c).cast(t) for c, t in casts.items()])
    return conform(frame, SCHEMA, name)


def test_files_validated_together_split_as_each_alone():
    clean = _file([_row(i) for i in range(30)], "clean")
    mixed = _file(
        [_row(i) for i in range(20)]
        + [_row(20, n=500), _row(21, site="zz"), _row(22, x=None), _row(0)],  # out of range, unknown, null, duplicate of row 0
        "mixed",
    )
    as_text = _file([_row(i, small=None) for i in range(10)] + [_row(10, code=9)], "text", n=pl.String, code=pl.String)
    all_bad = _file([_row(i, n=0) for i in range(5)], "all bad")
    files = [clean, mixed, as_text, all_bad]
    elsewhere = pl.DataFrame({SOURCE_ROW: [3], "reason": ["when: 2024-03-02 is outside partition 2024-03-01"]}).cast(
        {SOURCE_ROW: pl.UInt32}
    )
    misplaced = [None, elsewhere, None, None]

    together = validate_files(files, SCHEMA, misplaced=misplaced)

    assert len(together) == 4
    for conformed, extra, result in zip(files, misplaced, together):
        alone = validate(conformed, SCHEMA, engine="pandera", misplaced=extra)  # pandera's own checks, one file
        assert_frame_equal(result.clean, alone.clean)
        assert_frame_equal(result.quarantine, alone.quarantine)
        assert dict(result.reasons.iter_rows()) == dict(alone.reasons.iter_rows())
    # the same keys are in every file: not one of them is a duplicate across files
    assert together[0].quarantine.height == 0 and together[0].clean.height == 30
    assert sorted(together[1].quarantine.get_column(SOURCE_ROW).to_list()) == [0, 3, 20, 21, 22, 23]
    assert together[3].clean.height == 0 and together[3].quarantine.height == 5
    # values as landed keep their own file's types
    text_reasons = together[2].quarantine.get_column("_original").to_list()
    assert len(text_reasons) == 1 and '"code":"9"' in text_reasons[0]


def test_no_files_and_a_single_file():
    assert validate_files([], SCHEMA) == []
    one = _file([_row(i) for i in range(3)] + [_row(0)], "dup")
    (result,) = validate_files([one], SCHEMA)
    assert result.quarantine.get_column(SOURCE_ROW).to_list() == [0, 3]
    assert result.clean.get_column(SOURCE_ROW).to_list() == [1, 2]
    assert result.clean.columns == one.frame.columns


def test_times_stay_as_declared():
    stamp = _file([_row(0, when=datetime(2024, 3, 1, 5, tzinfo=UTC))], "stamp")
    (result,) = validate_files([stamp], SCHEMA)
    assert result.clean.get_column("when").dtype == pl.Datetime("us", "UTC")


def test_files_cast_together_get_what_each_gets_cast_alone():
    """conform_files casts files of the same landed types in one call: each file keeps its own source rows,
    values as landed and cast failures (offsets into the stacked rows never leak into a file's rows)."""
    from mlops_assets.core.records import LandedFileError, conform_files

    def landed(rows: list[dict], **casts) -> pl.DataFrame:
        frame = pl.DataFrame(rows).with_columns(pl.col("when").cast(pl.Datetime("us", "UTC")))
        return frame.with_columns(*[pl.col(c).cast(t) for c, t in casts.items()]) if casts else frame

    clean = landed([_row(i) for i in range(7)])
    late_failures = landed([_row(i) for i in range(5)] + [_row(5, n=2.5), _row(6, small=300), _row(7, n=3.5)], n=pl.Float64, small=pl.Int64)
    early_failures = landed([_row(0, n=7.25)] + [_row(i) for i in range(1, 4)], n=pl.Float64, small=pl.Int64)
    as_text = landed([_row(0, n="x1"), _row(1), _row(2, code="two")], n=pl.String, code=pl.String)
    extra = landed([_row(i) for i in range(3)]).with_columns(pl.lit(1).alias("unknown"))
    frames = [clean, late_failures, early_failures, as_text, extra]
    names = ["clean", "late", "early", "text", "extra"]
    with pytest.raises(LandedFileError, match=r"^extra: unexpected columns not in the declared schema: unknown"):
        conform_files(frames, SCHEMA, names)  # the file with the unknown column is the one named
    dropping = SCHEMA.model_copy(update={"extra_columns": "drop"})
    together = conform_files(frames, dropping, names)
    for frame, name, got in zip(frames, names, together):
        alone = conform(frame, dropping, name)
        assert_frame_equal(got.frame, alone.frame)
        assert_frame_equal(got.original, alone.original)
        assert_frame_equal(got.cast_failures.cast({SOURCE_ROW: pl.UInt32}), alone.cast_failures.cast({SOURCE_ROW: pl.UInt32}))
        assert got.dropped_columns == alone.dropped_columns
    assert together[1].cast_failures.sort(SOURCE_ROW).rows() == [
        (5, "n: cannot read '2.5' as int32"),
        (6, "small: cannot read '300' as int8"),
        (7, "n: cannot read '3.5' as int32"),
    ]
    assert together[2].cast_failures.rows() == [(0, "n: cannot read '7.25' as int32")]
    assert sorted(together[3].cast_failures.rows()) == [(0, "n: cannot read 'x1' as int32"), (2, "code: cannot read 'two' as int16")]
    assert together[0].cast_failures.height == 0 and together[4].dropped_columns == ["unknown"]
    assert [c.frame.get_column(SOURCE_ROW).to_list() for c in together] == [list(range(f.height)) for f in frames]
