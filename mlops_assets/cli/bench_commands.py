"""`mlops bench ...`: benchmark scripts whose figures the README reports."""

from __future__ import annotations

import argparse
import json

from mlops_assets.cli.arg_types import non_negative_float, non_negative_int, one_or_more_of, port_number, positive_float, positive_int


def bench_drift(args: argparse.Namespace) -> int:
    from mlops_assets.cli.bench.drift_bench import bench, print_report

    result = bench(args.rows, args.numerical, args.categorical)
    print_report(result)
    if args.json:
        print(json.dumps(result))
    return 0


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rows takes comma-separated row counts, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--rows takes positive row counts, got {text!r}")
    return sizes


def bench_pipeline(args: argparse.Namespace) -> int:
    from mlops_assets.cli.bench.pipeline_bench import POSTGRES_SIDES, bench, print_report

    sides = ("platform", "backfill") if args.platform_only else ("platform", "backfill", "pandas")
    if args.postgres:
        sides += POSTGRES_SIDES
    result = bench(args.rows, days=args.days, check_rows=args.check_rows, training=not args.no_training, sides=sides)
    print_report(result)
    if args.json:
        print(json.dumps(result))
    return 0


def _env_pair(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--ours-env takes NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    return name, value


def bench_serving(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mlops_assets.cli.bench.serving_bench import bench, print_report

    result = bench(
        Path(args.workdir) if args.workdir else None,
        duration_s=args.duration,
        warmup_s=args.warmup,
        sides=args.sides,
        ours_env=dict(args.ours_env or []),
        num_cpus=args.num_cpus,
        cases=tuple(c.strip() for c in args.cases.split(",")) if args.cases else None,
        protocols=args.protocols,
        proxy=args.proxy,
        compiled_trees=args.compiled_trees,
    )
    print_report(result)
    if args.json:
        print(json.dumps(result))
    return 0


def bench_leadtime(args: argparse.Namespace) -> int:
    from mlops_assets.cli.bench.lead_time_bench import bench, print_report
    from mlops_assets.cli.ports import require_listenable

    require_listenable("127.0.0.1", {"--port": args.port, "--serve-port": args.serve_port})
    result = bench(initial_days=args.initial_days, port=args.port, serve_port=args.serve_port, timeout=args.timeout, keep=args.keep)
    print_report(result)
    if args.json:
        print(json.dumps(result))
    return 0


def bench_backlog(args: argparse.Namespace) -> int:
    import signal
    import sys

    from mlops_assets.cli.bench.backlog_bench import print_report, walkaway_case, year_case

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a SIGTERM still stops the platform the case started
    results = []
    for case in args.cases:  # each reported as soon as it is done
        if case == "year":
            results.append(year_case(timeout=args.timeout))
        else:
            results.append(walkaway_case(args.initial_days, args.interval, args.burst_after, timeout=args.timeout))
        print_report(results[-1:])
    if args.json:
        print(json.dumps(results))
    return 0


def _cases(text: str) -> list[str]:
    cases = [c.strip() for c in text.split(",") if c.strip()]
    unknown = sorted(set(cases) - {"year", "walkaway"})
    if unknown or not cases:
        raise argparse.ArgumentTypeError(f"--cases takes year and/or walkaway, got {text!r}")
    return cases


def bench_reliability(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mlops_assets.cli.bench.reliability_bench import bench, print_report

    result = bench(Path(args.workdir) if args.workdir else None, long=args.long, num_cpus=args.num_cpus)
    print_report(result)
    if args.json:
        print(json.dumps(result))
    return 0 if result["passed"] else 1


def register(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="run a benchmark").add_subparsers(dest="benchmark", required=True)
    p = bench.add_parser("drift", help="drift decision vs Evidently DataDriftPreset")
    p.add_argument("--rows", type=positive_int, default=1_000_000)
    p.add_argument("--numerical", type=positive_int, default=15)
    p.add_argument("--categorical", type=non_negative_int, default=5)
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    p.set_defaults(handler=bench_drift)
    p = bench.add_parser("pipeline", help="ingest + validate + featurize vs pandas; training vs bare lgb.train")
    p.add_argument("--rows", type=_sizes, default=[1_000_000, 10_000_000], help="comma-separated sizes (default 1000000,10000000)")
    p.add_argument("--days", type=positive_int, default=365, help="daily partitions the rows are spread over (default 365)")
    p.add_argument("--check-rows", type=positive_int, default=30_000, help="rows of the platform/pandas agreement check")
    p.add_argument("--no-training", action="store_true", help="skip the training-overhead measurement")
    p.add_argument("--platform-only", action="store_true", help="skip the pandas baseline")
    p.add_argument(
        "--postgres",
        action="store_true",
        help="also run the backfill stored in PostgreSQL, as the cluster's Dagster stores it, with the deployment's "
        "batched event writes and with one event at a time (a throwaway server; needs PostgreSQL's binaries and "
        "dagster-postgres)",
    )
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    p.set_defaults(handler=bench_pipeline)
    p = bench.add_parser("serving", help="Ray Serve endpoint vs `mlflow models serve` vs a naive FastAPI app, with wrk")
    p.add_argument("--duration", type=positive_float, default=5.0, help="seconds of load per case (default 5)")
    p.add_argument("--warmup", type=non_negative_float, default=1.0, help="seconds of unmeasured load before each case (default 1)")
    p.add_argument(
        "--sides",
        type=one_or_more_of("ours", "floor", "mlflow", "naive"),
        default=("ours", "floor", "mlflow", "naive"),
        help="servers to run, comma-separated (default ours,floor,mlflow,naive)",
    )
    p.add_argument("--workdir", help="platform home to build or reuse (keeps the trained champion between runs); default: a temp folder")
    p.add_argument("--ours-env", type=_env_pair, action="append", metavar="NAME=VALUE", help="extra environment for our server (levers)")
    p.add_argument("--num-cpus", type=positive_int, default=2, help="CPUs our Ray instance declares (default 2)")
    p.add_argument("--cases", help="only these cases, comma-separated: 'single c=1,single c=16,batch 1k,batch 10k' (default all)")
    p.add_argument("--protocols", type=one_or_more_of("v1", "v2"), default=("v1", "v2"), help="our protocols to load (default v1,v2)")
    p.add_argument(
        "--proxy", choices=("haproxy", "serve"), default="haproxy", help="our ingress (`mlops serve start --proxy`; haproxy is its default)"
    )
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    p.add_argument(
        "--compiled-trees",
        action="store_true",
        help="declare serving.compiled_trees for our server (tl2cgen, the [compiled] extra); the bench waits for the build",
    )
    p.set_defaults(handler=bench_serving)
    p = bench.add_parser("reliability", help="fault and load cases: killed replicas, steps and training; swaps; a store outage; a soak")
    p.add_argument("--long", action="store_true", help="ten champion swaps and the ten-minute soak (CI runs this after the suite)")
    p.add_argument("--workdir", help="platform home to build the cases in (kept afterwards); default: a temp folder, removed")
    p.add_argument("--num-cpus", type=positive_int, default=2, help="CPUs the bench's Ray instance declares (default 2)")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    p.set_defaults(handler=bench_reliability)
    p = bench.add_parser("leadtime", help="a landed day to the model trained on it answering, on the local platform")
    p.add_argument("--initial-days", type=positive_int, default=28, help="days landed before the platform starts (default 28)")
    p.add_argument("--port", type=port_number, default=3019, help="Dagster UI port of the bench platform (default 3019)")
    p.add_argument("--serve-port", type=port_number, default=8019, help="Ray Serve port of the bench platform (default 8019)")
    p.add_argument("--timeout", type=positive_float, default=900.0, help="seconds to wait for each stage (default 900)")
    p.add_argument("--keep", action="store_true", help="keep the bench platform home (its runs and tables) afterwards")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    p.set_defaults(handler=bench_leadtime)
    p = bench.add_parser("backlog", help="a year of files landed at once, and the demo's walk-away story, on the local platform")
    p.add_argument("--cases", type=_cases, default=["year", "walkaway"], help="year,walkaway (default both)")
    p.add_argument("--initial-days", type=positive_int, default=28, help="walkaway: days landed before the platform starts (default 28)")
    p.add_argument("--interval", type=non_negative_float, default=20.0, help="walkaway: seconds between landed days (default 20)")
    p.add_argument(
        "--burst-after", type=non_negative_float, default=40.0, help="walkaway: seconds before the seven July days land (default 40)"
    )
    p.add_argument("--timeout", type=positive_float, default=900.0, help="seconds to wait for each stage (default 900)")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    p.set_defaults(handler=bench_backlog)
