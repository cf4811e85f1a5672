"""A second declaration gives a second, independent set of assets, checks, jobs and sensors."""

import importlib
import os

import dagster as dg
import polars as pl

from mlops_assets.core.declaration import PACKAGED_PIPELINES, load_declaration
from tests.support.platform import TESTS, Platform


def test_second_declaration_needs_no_platform_code(monkeypatch):
    monkeypatch.setenv("MLOPS_PIPELINES", os.pathsep.join([str(PACKAGED_PIPELINES), str(TESTS / "pipelines")]))
    import mlops_assets.definitions as location

    defs = importlib.reload(location).defs
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    for name in ("flights", "telemetry"):
        assert {f"{name}/landing", f"{name}/raw", f"{name}/quarantine", f"{name}/features"} <= keys
        assert defs.resolve_job_def(f"{name}_ingest")
        assert defs.resolve_sensor_def(f"{name}_landing_sensor")
    assert "telemetry/reference" not in keys, "no reference tables declared, no reference asset"
    # a declared rollout brings its asset, job and sensor; a pipeline without one has none
    assert "telemetry/rollout" in keys and "flights/rollout" not in keys
    assert defs.resolve_job_def("telemetry_rollout") and defs.resolve_sensor_def("telemetry_rollout_sensor")
    checks = {k.name + "@" + k.asset_key.to_user_string() for k in graph.asset_check_keys}
    assert {"validation@flights/raw", "validation@telemetry/raw"} <= checks
    monkeypatch.delenv("MLOPS_PIPELINES")
    importlib.reload(location)


def test_pipelines_run_side_by_side_without_touching_each_other(tmp_path, flights_decl):
    telemetry = load_declaration(TESTS / "pipelines" / "telemetry.yaml")
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        plat = Platform(tmp_path, [flights_decl, telemetry], instance)
        rows = "".join(f"m{i % 4 + 1},2024-03-0{d}T{i:02d}:00:00Z,{20 + i},0.{i},{i % 2}\n" for d in (1, 2) for i in range(12))
        for d in (1, 2):
            day_rows = [r for r in rows.splitlines(keepends=True) if f"2024-03-0{d}T" in r]
            plat.landing.write_bytes(
                "telemetry",
                f"readings-2024-03-0{d}.csv",
                ("machine_id,reading_time,temperature,vibration,failure\n" + "".join(day_rows)).encode(),
            )
        sensor = plat.defs.resolve_sensor_def("telemetry_landing_sensor")
        tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=plat.resources(), definitions=plat.defs))
        (burst,) = tick.run_requests  # two files landed together: one run over both days
        assert (burst.partition_key_range.start, burst.partition_key_range.end) == ("2024-03-01", "2024-03-02")
        assert burst.job_name == "telemetry_ingest"
        assert plat.defs.resolve_job_def("telemetry_ingest").execute_in_process(instance=instance, tags=burst.tags).success
        features = plat.delta.read_partitions("telemetry", "features", ["2024-03-02"])
        assert features.height == 12
        # history statistics come from the day before only
        day1_mean = {f"m{k}": sum(20 + i for i in range(12) if i % 4 + 1 == k) / 3 for k in range(1, 5)}
        got = features.select("machine_id", pl.col("temperature") - pl.col("temperature_vs_usual"))
        assert {m: round(v, 6) for m, v in got.unique().iter_rows()} == {m: round(v, 6) for m, v in day1_mean.items()}
        assert plat.delta.table("flights", "raw") is None, "the flights tables are untouched"
        flights_sensor = plat.defs.resolve_sensor_def("flights_landing_sensor")
        idle = flights_sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=plat.resources(), definitions=plat.defs))
        assert not idle.run_requests
