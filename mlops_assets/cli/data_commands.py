"""`mlops` commands about data and the local platform: land, pipelines, demo."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from datetime import date, datetime, timedelta
from pathlib import Path

from mlops_assets.cli.arg_types import interval_seconds, iso_day, port_number, positive_int
from mlops_assets.cli.ports import require_listenable
from mlops_assets.core.declaration import MLPIPELINE_TYPE, PipelineDeclaration, load_declarations
from mlops_assets.core.home import MlopsHome
from mlops_assets.core.names import BACKLOG_TAG, QUEUE_TAGS
from resources.landing_zone import LandingZoneResource

REPO_ROOT = Path(__file__).resolve().parents[2]
DAGSTER_YAML = (
    """\
# Written by `mlops demo` or `mlops land`: embedded defaults (SQLite storage under this folder).
telemetry:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 3
    # one run per pipeline and tag at a time: ingestion (days featurized in landing order),
    # training, rollout; ingestion and monitoring hold at most 2 of the 3 slots, so training
    # and rollouts never wait for a backlog run to finish
    tag_concurrency_limits:
"""
    + "".join(f'      - key: "{tag}"\n        value: {{applyLimitPerUniqueValue: true}}\n        limit: 1\n' for tag in QUEUE_TAGS)
    + f'      - key: "{BACKLOG_TAG}"\n        value: "true"\n        limit: 2\n'
)
# Dagster's own settings for single-run backfills, in every Dagster process of every deployment: `mlops demo`'s
# home, and the cluster's (deploy/README.md puts them in the platform ConfigMap; a test holds the two equal).
# - DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS: one planned-materialization event per asset for a run over
#   a partition range instead of one per partition (a year landed at once: 3 events, not 1,095 SQLite writes,
#   16 s of the run's creation on 2 cores). Its cost, as Dagster documents it: partitions of a range run that
#   fails show as missing rather than failed in the UI (the run itself shows failed, naming them). Set it to
#   false in the environment to keep per-partition failure status.
# - DAGSTER_EVENT_BATCH_SIZE: a range run's per-partition materializations stored in batches. Dagster's Postgres
#   storage writes a batch in one insert, where one event at a time opens a connection each (a 365-day backfill
#   of 1M rows: 28.3 s on Postgres, 5.8 s batched; `mlops bench pipeline --postgres`). SQLite stores a batch
#   event by event, as before.
DAGSTER_ENV = {"DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true", "DAGSTER_EVENT_BATCH_SIZE": "1000"}


DEMO_START = "2013-01-01"  # the flights demo's first day (upstream.check_covered holds the data's range)


def pipeline_by_name(name: str) -> PipelineDeclaration:
    decls = {d.name: d for d in load_declarations()}
    if name not in decls:
        raise LookupError(f"no pipeline named '{name}'; declared: {', '.join(sorted(decls)) or 'none'}")
    return decls[name]


def landing_zone() -> LandingZoneResource:
    return LandingZoneResource(root=os.environ.get("MLOPS_LANDING_URI", ""))


def land(args: argparse.Namespace) -> int:
    decl = pipeline_by_name(args.pipeline)
    home = MlopsHome.from_env()
    starts = not os.environ.get("MLOPS_LANDING_URI") and not home.is_platform()
    landed = _land(args, decl, landing_zone())
    if starts:  # said once landed (a refused file starts nothing): a mistyped MLOPS_HOME lands unseen in a new folder
        print(f"MLOPS_HOME {home.root} held no platform: landing started one there", file=sys.stderr)
    if not os.environ.get("MLOPS_LANDING_URI"):
        _instance_settings(home)
    return landed


def _instance_settings(home: MlopsHome) -> None:
    """The home's Dagster instance settings, where it has none: `dg dev` or `dg launch` on a home only landed into (the
    README's way without the demo) ran on Dagster's defaults, without the run queue's limits, so two ingestion runs of
    a pipeline could run at once (days featurized out of landing order, and two writes of one partition conflicting).
    One already there is the user's or the demo's, and stays."""
    settings = home.dagster / "dagster.yaml"
    if settings.exists():
        return
    home.dagster.mkdir(parents=True, exist_ok=True)
    settings.write_text(DAGSTER_YAML)
    print(f"wrote {settings}: the run queue's limits for Dagster on this home (DAGSTER_HOME={home.dagster})", file=sys.stderr)


def _land(args: argparse.Namespace, decl: PipelineDeclaration, landing: LandingZoneResource) -> int:
    if args.reference is not None:
        if not args.file or args.partition is not None or args.start is not None or args.days is not None:
            raise ValueError("--reference lands one --file as that reference table; it takes no --partition, --start or --days")
        return _land_reference(decl, landing, Path(args.file), args.reference)
    if args.file:
        if args.start is not None or args.days is not None:
            raise ValueError("--start and --days choose demo days to land; a --file lands as its --partition")
        return _land_file(decl, landing, Path(args.file), args.partition)
    if args.partition is not None:
        raise ValueError("--partition names the partition a --file holds; demo days are chosen with --start and --days")
    if decl.name != "flights" and not decl.features.module.startswith("mlops_assets.defs.flights"):
        raise ValueError(f"only the flights demo generates data; land {decl.name} files with --file and --partition")
    from mlops_assets.defs.flights.upstream import land_days

    start = date.fromisoformat(args.start or DEMO_START)
    for uri in land_days(decl, landing, start, args.days or 1):
        print(f"landed {uri}")
    return 0


def _land_file(decl: PipelineDeclaration, landing: LandingZoneResource, source: Path, partition: str | None) -> int:
    """One file as the partition it holds, refused before anything is written where the landing sensor would skip
    it (a key that is no partition of the declaration: the wrong form for its kind, not aligned, out of range) or
    ingestion could not read it (a file that is not Parquet for a Parquet pipeline, without a declared column, or
    with one the declaration does not know where it says `extra_columns: fail`)."""
    from mlops_assets.core.partitions import KEY_FORMS, partition_problem

    kind = decl.partitioning.kind
    if not partition:
        tables = [name for name, file_name in decl.landing.reference_tables.items() if file_name == source.name]
        if tables:  # the one kind of file --partition cannot land: the README said to copy it by hand
            raise ValueError(f"--file {source} is the file of reference table '{tables[0]}': land it with --reference {tables[0]}")
        raise ValueError(f"--file needs --partition, the {kind} partition the file holds ({KEY_FORMS[kind]})")
    if source.is_dir():
        raise ValueError(f"--file {source} is a folder: land one file per partition")
    if not source.is_file():
        raise ValueError(f"--file {source} does not exist")
    problem = partition_problem(decl, partition, now=datetime.max)  # a partition still running may be landed
    if problem is not None:
        raise ValueError(f"--partition {problem}")
    data = source.read_bytes()  # read once: checked, then landed
    if decl.landing.format == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pq.read_metadata(pa.BufferReader(data))
        except (pa.ArrowException, OSError) as err:
            raise ValueError(f"--file {source} is not a Parquet file ({err})") from None
    # read as ingestion reads it: a file without the declared columns was landed, and its ingestion run failed
    from mlops_assets.core.records import checked_columns, conform, read_landed

    frame = read_landed(data, str(source), decl.landing.format)
    checked_columns(frame, decl.table_schema, str(source))
    conformed = conform(frame, decl.table_schema, str(source))
    unreadable = _rows_unreadable(conformed.cast_failures, frame.height, source)
    outside = _rows_outside(decl, conformed.frame, source, partition)
    uri = landing.write_bytes(decl.name, decl.landing.file_name(partition), data)
    print(f"landed {uri}")
    if unreadable:
        print(f"  {unreadable} of its rows hold values that cannot be read as declared: ingestion quarantines them", flush=True)
    if outside:
        print(f"  {outside} of its rows lie outside {partition} (partitioning.time_column): ingestion quarantines them", flush=True)
    if partition_problem(decl, partition) is not None:
        print(f"  {partition} has not ended yet: the landing sensor ingests it once it has", flush=True)
    return 0


def _land_reference(decl: PipelineDeclaration, landing: LandingZoneResource, source: Path, table: str) -> int:
    """A reference table's file, under its declared name in the reference/ folder, written then renamed (a copy by hand
    could be read half-written by the reference asset), once it reads as the reference asset reads it."""
    file_name = decl.landing.reference_tables.get(table)
    if file_name is None:
        declared = ", ".join(sorted(decl.landing.reference_tables)) or "none (landing.reference_tables)"
        raise ValueError(f"--reference {table}: {decl.name} declares no such reference table; declared: {declared}")
    if not source.is_file():
        raise ValueError(f"--file {source} does not exist" + (" (it is a folder)" if source.is_dir() else ""))
    from mlops_assets.core.records import read_landed

    data = source.read_bytes()
    read_landed(data, str(source), decl.landing.reference_format(file_name), infer_types=True)
    print(f"landed {landing.write_bytes(decl.name, file_name, data, folder='reference')}")
    return 0


def _rows_unreadable(failures, rows: int, source: Path) -> int:
    """How many rows hold a value that cannot be read as its column's declared type. A file in which every row does
    (a column of text for a number, epoch seconds for a datetime) is refused: it was landed, quarantined whole at
    ingestion, and its partition's features held back with no word of the cause."""
    from mlops_assets.core.names import SOURCE_ROW

    count = failures.get_column(SOURCE_ROW).n_unique() if failures.height else 0
    if count == rows:
        raise ValueError(f"--file {source}: none of its {rows} rows can be read as declared (first: {failures['reason'][0]})")
    return count


def _rows_outside(decl: PipelineDeclaration, frame, source: Path, partition: str) -> int:
    """How many rows of the conformed `frame` lie outside `partition` by the declared `partitioning.time_column` (0
    without one). A file whose every row does is refused: landed under another partition's key (a typo in --partition),
    it was quarantined whole at ingestion and its partition's features held back."""
    if decl.partitioning.time_column is None:
        return 0
    from mlops_assets.core.names import SOURCE_ROW
    from mlops_assets.core.partitions import misplaced_in_files

    (outside,) = misplaced_in_files(decl, [frame], [partition], SOURCE_ROW)
    if outside.height and outside.height == frame.height:
        raise ValueError(
            f"--file {source}: none of its {frame.height} rows lies in partition {partition} "
            f"(the first row's {outside['reason'][0]}): is --partition the file's own?"
        )
    return outside.height


def pipelines(args: argparse.Namespace) -> int:
    decls = load_declarations()
    if not decls:
        where = os.environ.get("MLOPS_PIPELINES") or "the packaged pipelines"
        raise ValueError(f"no pipeline is declared in {where} (MLOPS_PIPELINES): no {MLPIPELINE_TYPE} component or declaration")
    import warnings

    import dagster as dg

    from mlops_assets.pipeline import build_pipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # Dagster's own notes on its APIs, not the user's to act on
        warnings.simplefilter("ignore", dg.PreviewWarning)
        for decl in decls:
            # built as the code location builds it: a features.module that cannot be imported, a lookup of a table nothing
            # provides or a gate metric of another task was listed as valid here and then failed the code location's load
            build_pipeline(decl)
    for decl in decls:
        print(
            f"{decl.name}: {decl.target.task} on {decl.target.column}, {_partitions(decl)}, {decl.landing.format} files "
            f"'{decl.landing.file_pattern}', features {decl.features.module}, declaration {decl.fingerprint()}"
        )
    return 0


def _partitions(decl: PipelineDeclaration) -> str:
    """The partitions a declaration makes, from the first: a weekly `start` on a Monday (or a monthly one on the 15th)
    loaded without a word, and the period holding it, which is no partition, could not be landed."""
    from mlops_assets.core.partitions import partitions_def

    spec = decl.partitioning
    first = partitions_def(decl).get_first_partition_key()
    said = f"{spec.kind} partitions from {first}" if first else f"no {spec.kind} partition yet"
    if first and spec.kind in ("weekly", "monthly") and first != spec.start.isoformat():
        said += f" (partitioning.start {spec.start} begins no {spec.unit}: the {spec.unit} that holds it is not a partition)"
    return said


def _prepare_home(home: MlopsHome) -> dict[str, str]:
    home.dagster.mkdir(parents=True, exist_ok=True)
    (home.dagster / "dagster.yaml").write_text(DAGSTER_YAML)
    _create_mlflow_store(home)
    return {**DAGSTER_ENV, **os.environ, "MLOPS_HOME": str(home.root), "DAGSTER_HOME": str(home.dagster)}


def _create_mlflow_store(home: MlopsHome) -> None:
    """The home's SQLite MLflow store with its tables, made once before the processes sharing it start: two
    sensors opening a fresh store at once both ran its migrations ("table ... already exists")."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return  # a server of the user's: its own business
    from resources.mlflow_registry import MlflowRegistryResource

    home.mlflow.mkdir(parents=True, exist_ok=True)
    MlflowRegistryResource(tracking_uri=home.mlflow_tracking_uri).client().search_experiments(max_results=1)


def demo(args: argparse.Namespace) -> int:
    """Start Dagster (webserver + daemon, sensors on) and land flights days as an upstream system would."""
    from mlops_assets.defs.flights.upstream import check_covered

    # every day the demo will land, checked before anything starts: a later day past the data stopped the landing
    # thread with a traceback while the platform kept running
    start = date.fromisoformat(args.start)
    check_covered(start, args.days)
    require_listenable(args.host, {"--port": args.port, "--serve-port": args.serve_port, "--mlflow-port": args.mlflow_port})
    home = MlopsHome.from_env()
    if args.reset:
        home.require_resettable()
    held = home.hold()  # for the demo's lifetime: released when the process ends, however it ends
    try:
        return _run_demo(args, home, start)
    finally:
        held.close()


def _run_demo(args: argparse.Namespace, home: MlopsHome, start: date) -> int:
    from mlops_assets.defs.flights.upstream import land_days

    if args.reset:
        home.clear()
    env = _prepare_home(home)
    os.environ.update(MLOPS_HOME=env["MLOPS_HOME"], DAGSTER_HOME=env["DAGSTER_HOME"])
    decl = pipeline_by_name("flights")
    landing = landing_zone()
    first = min(args.initial_days, args.days)
    # a restart goes on from where the demo stopped: days already landed are not written again (each rewrite was
    # a replaced file, ingested again into new Delta versions of the same rows)
    there = sum(_landed(decl, landing, start + timedelta(days=i)) for i in range(first))
    land_days(decl, landing, start, first, only_new=True)
    processes = start_local_platform(env, args.host, args.port, args.serve_port, args.mlflow_port)
    print(
        f"\nMLOps demo\n  Dagster UI:   http://{args.host}:{args.port}\n"
        f"  Predictions:  http://{args.host}:{args.serve_port}/v1/models/flights:predict  (OpenAPI: /docs), once a champion is promoted\n"
        f"  MLflow UI:    http://{args.host}:{args.mlflow_port}  (experiments and the registry; Dagster's links point here)\n"
        f"  platform home: {home.root}\n"
        f"  landed {first - there} days from {start}"
        + (f" ({there} were there already)" if there else "")
        + (f"; one more day every {args.interval:g}s up to {args.days}\n" if args.days > first else "\n")
        + "  Ctrl-C stops everything.\n",
        flush=True,
    )
    stop = threading.Event()
    # a SIGTERM (service manager, timeout) or the terminal closing (SIGHUP) stops Dagster too, through the finally
    # below: the children run in sessions of their own, which neither signal reaches
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))

    def keep_landing() -> None:
        for i in range(first, args.days):
            day = start + timedelta(days=i)
            if _landed(decl, landing, day):
                continue  # landed before a restart
            if stop.wait(args.interval):
                return
            land_days(decl, landing, day, 1)
            print(f"[demo] landed {day}", flush=True)

    threading.Thread(target=keep_landing, daemon=True).start()
    try:
        return _wait_interruptibly(processes[0])
    except KeyboardInterrupt:
        return 0
    finally:
        stop.set()
        stop_local_platform(processes)


def _wait_interruptibly(process: subprocess.Popen) -> int:
    """`process.wait()`, polled: blocked in waitpid, the main thread never saw a Ctrl-C that the kernel handed to
    another of the process's threads, so the demo went on until Dagster itself ended."""
    while True:
        try:
            return process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            continue


def _landed(decl: PipelineDeclaration, landing: LandingZoneResource, day: date) -> bool:
    return landing.stat(decl.name, decl.landing.file_name(day.isoformat())) is not None


def start_local_platform(
    env: dict[str, str], host: str, port: int, serve_port: int, mlflow_port: int | None = None
) -> list[subprocess.Popen]:
    """Dagster (`dg dev`: webserver, daemon, code server), Ray Serve and, given a port, the MLflow UI
    as child processes, on the home `env` names."""
    from mlops_assets.cli.serve_commands import serve_process

    # Ray 2.60 turns token auth on for the local cluster serving starts; Dagster runs join it by
    # address, which needs the mode in their environment from the start. `dg` runs the project of
    # pyproject.toml's [tool.dg] in this interpreter's environment.
    env = dict(env, RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "token"), VIRTUAL_ENV=sys.prefix)
    if mlflow_port is not None:
        env["MLOPS_MLFLOW_UI_URL"] = f"http://{host}:{mlflow_port}"
    bin_dir = Path(sys.executable).parent
    # every child in a session of its own: a terminal's Ctrl-C reaches only this process, which stops them in
    # order (stop_local_platform); sent to the whole group, it also hit the runs in flight and their orphan
    # watchers, which printed KeyboardInterrupt tracebacks and failed the runs as "interrupted unexpectedly"
    server = subprocess.Popen([str(bin_dir / "dg"), "dev", "-h", host, "-p", str(port)], cwd=REPO_ROOT, env=env, start_new_session=True)
    processes = [server, serve_process(env, host, serve_port)]
    if mlflow_port is not None:
        home = MlopsHome(Path(env["MLOPS_HOME"]))
        home.mlflow.mkdir(parents=True, exist_ok=True)
        # one worker and no job runner: MLflow's defaults (4 workers, 7 job consumers) took 2.5 GB, more than Dagster
        cmd = [str(bin_dir / "mlflow"), "ui", "--backend-store-uri", home.mlflow_tracking_uri, "--host", host, "--port", str(mlflow_port)]
        cmd += ["--workers", "1"]
        ui_env = dict(env, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        processes.append(subprocess.Popen(cmd, cwd=home.mlflow, env=ui_env, start_new_session=True))
    return processes


def stop_local_platform(processes: list[subprocess.Popen]) -> None:
    """Stop what `start_local_platform` started, and only that: Dagster by SIGINT (its own shutdown: webserver,
    daemon, code server, runs), serving and the MLflow UI by SIGTERM; a process group still there a minute later
    by SIGKILL."""
    server, serving, *others = processes
    for process, sig in ((serving, signal.SIGTERM), (server, signal.SIGINT)):
        if process.poll() is None:
            process.send_signal(sig)
    for process in others:  # the MLflow UI runs its server workers in its own process group
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in (serving, server, *others):
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own group: its Ray processes, or Dagster's, go with it
            process.wait()


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("land", help="land data files into a pipeline's landing zone")
    p.add_argument("pipeline")
    p.add_argument("--start", type=iso_day, help=f"first day (flights demo; default {DEMO_START})")
    p.add_argument("--days", type=positive_int, help="number of days (flights demo; default 1)")
    p.add_argument("--file", help="land this file instead of demo data")
    p.add_argument("--partition", help="the partition the --file holds: YYYY-MM-DD (hourly: YYYY-MM-DD-HH:MM)")
    p.add_argument("--reference", metavar="TABLE", help="land the --file as this reference table (landing.reference_tables)")
    p.set_defaults(handler=land)

    p = commands.add_parser("pipelines", help="list the declared pipelines (validates every declaration)")
    p.set_defaults(handler=pipelines)

    p = commands.add_parser("demo", help="start the local platform and land the flights demo")
    p.add_argument("--start", type=iso_day, default=DEMO_START)
    p.add_argument("--days", type=positive_int, default=120, help="days to land in all")
    p.add_argument("--initial-days", type=positive_int, default=21, help="days landed before Dagster starts")
    p.add_argument("--interval", type=interval_seconds, default=20.0, help="seconds between later days (up to a day)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port_number, default=3000, help="Dagster UI port")
    p.add_argument("--serve-port", type=port_number, default=8000, help="Ray Serve HTTP port")
    p.add_argument("--mlflow-port", type=port_number, default=5000, help="MLflow UI port")
    p.add_argument("--reset", action="store_true", help="wipe $MLOPS_HOME first")
    p.set_defaults(handler=demo)
