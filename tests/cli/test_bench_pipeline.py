"""`mlops bench pipeline`: the pandas baseline does what the platform does, and the bench runs end to end.

No timings are asserted: the figures belong in the README, not in tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from mlops_assets.cli.bench import pandas_baseline, pipeline_bench
from mlops_assets.cli.main import main


def test_generated_days_are_valid_flights_with_known_breakage(tmp_path: Path):
    summary = pipeline_bench.generate(4_000, tmp_path, days=pipeline_bench.DAYS_2013[:6], seed=3)
    assert summary == {"rows": 4_000, "days": 6, "files": 6}
    frame = pl.read_parquet(sorted(tmp_path.glob("flights_*.parquet")))
    assert frame.height == 4_000
    assert frame.select("month", "day").unique().height == 6
    # broken on purpose: a known share, so quarantine is exercised, far below the 5% limit
    assert frame.filter(pl.col("dest") == "XXX").height == 4
    assert frame.filter(pl.col("carrier").is_null()).height == 4
    assert frame.filter(pl.col("hour") == 300).height == 4


def test_pandas_baseline_agrees_with_platform(tmp_path: Path):
    pipeline_bench.generate(3_000, tmp_path, days=pipeline_bench.DAYS_2013[:8], seed=11)
    agreement = pipeline_bench.compare(tmp_path)
    assert agreement["rows"] == 3_000
    assert agreement["clean"] + agreement["quarantined"] == 3_000
    # every kind of breakage is quarantined (5 kinds x 3 rows, duplicates quarantine both copies)
    assert 15 <= agreement["quarantined"] <= 30
    assert agreement["feature_values"] > agreement["clean"] * 20


def test_agreement_check_catches_a_different_feature(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pipeline_bench.generate(1_500, tmp_path, days=pipeline_bench.DAYS_2013[:3], seed=11)
    combine = pandas_baseline.combine_history

    def off_by_a_little(partials):
        stats = combine(partials)
        stats["carrier_stats"]["carrier_mean_arr_delay"] += 1e-3
        return stats

    monkeypatch.setattr(pandas_baseline, "combine_history", off_by_a_little)
    with pytest.raises(AssertionError, match="carrier_mean_arr_delay differs"):
        pipeline_bench.compare(tmp_path)


def test_agreement_check_catches_a_different_quarantine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pipeline_bench.generate(1_500, tmp_path, days=pipeline_bench.DAYS_2013[:2], seed=11)
    original = pandas_baseline.ingest_validate

    def lenient(frame, schema):
        return original(frame.assign(dep_delay=frame["dep_delay"].clip(upper=2000)), schema)

    monkeypatch.setattr(pandas_baseline, "ingest_validate", lenient)
    with pytest.raises(AssertionError, match="quarantine differs"):
        pipeline_bench.compare(tmp_path)


def test_bench_pipeline_command_end_to_end(capsys: pytest.CaptureFixture):
    code = main(["bench", "pipeline", "--rows", "20000", "--days", "10", "--check-rows", "2000", "--no-training", "--json"])
    assert code == 0
    out = capsys.readouterr().out
    assert "platform vs pandas" in out
    result = json.loads(out.strip().splitlines()[-1])
    (size,) = result["sizes"]
    platform, pandas = size["platform"], size["pandas"]
    assert platform["rows"] == pandas["rows"] == 20_000
    assert platform["partitions"] == pandas["partitions"] == 10
    assert platform["clean"] == pandas["clean"]
    assert platform["quarantined"] == pandas["quarantined"] > 0
    assert platform["clean"] + platform["quarantined"] == 20_000
    assert platform["peak_mb"] > 0 and pandas["peak_mb"] > 0
    assert set(platform["stages"]) == {"read", "cast", "validate", "history", "features"}
    backfill = size["backfill"]  # the real ingest job over the range, one run: the same split
    assert (backfill["rows"], backfill["clean"], backfill["partitions"]) == (20_000, platform["clean"], 10)
    assert set(backfill["stages"]) == {"ingest", "features"}
    assert result["agreement"]["rows"] == 2_000


def test_bench_pipeline_backfill_on_postgres_batched_and_one_by_one(capsys: pytest.CaptureFixture):
    """The `--postgres` sides: the same backfill stored in a throwaway PostgreSQL, as the cluster's Dagster stores
    it, with the deployment's batched event writes and with one event at a time: the same rows, every partition.
    (The command's other sides are the end-to-end test's; `--postgres` adds these two, as the next test shows.)"""
    from mlops_assets.cli.bench.throwaway_postgres import unavailable

    reason = unavailable()
    if reason:
        pytest.skip(reason)
    sides = pipeline_bench.POSTGRES_SIDES
    result = pipeline_bench.bench([3000], days=3, check_rows=1000, training=False, sides=sides)
    pipeline_bench.print_report(result)
    assert "batched event writes vs one event at a time" in capsys.readouterr().out
    (size,) = result["sizes"]
    batched, one_by_one = size["backfill-postgres"], size["backfill-postgres-one-by-one"]
    for side, s in zip(sides, (batched, one_by_one)):
        assert s["side"] == side
        assert (s["rows"], s["partitions"]) == (3_000, 3)
        assert set(s["stages"]) == {"ingest", "features"}
    assert batched["clean"] == one_by_one["clean"] > 0 and batched["quarantined"] == one_by_one["quarantined"]
    assert size["postgres_batching_speedup"] > 0


def test_bench_pipeline_postgres_without_a_server_is_a_clear_error(monkeypatch, capsys: pytest.CaptureFixture):
    from mlops_assets.cli.bench import throwaway_postgres

    monkeypatch.setattr(throwaway_postgres, "unavailable", lambda: "PostgreSQL server binaries not installed")
    asked: list[tuple] = []
    bench = pipeline_bench.bench
    monkeypatch.setattr(pipeline_bench, "bench", lambda *a, **kw: asked.append(kw["sides"]) or bench(*a, **kw))
    assert main(["bench", "pipeline", "--rows", "1000", "--days", "2", "--no-training", "--platform-only", "--postgres"]) == 2
    assert "--postgres: PostgreSQL server binaries not installed" in capsys.readouterr().err
    assert asked == [("platform", "backfill", "backfill-postgres", "backfill-postgres-one-by-one")]


def test_bench_pipeline_rejects_bad_sizes(capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit):
        main(["bench", "pipeline", "--rows", "1e6x"])
    assert main(["bench", "pipeline", "--rows", "1000", "--days", "400"]) == 2
    assert "days must be between 1 and 365" in capsys.readouterr().err
