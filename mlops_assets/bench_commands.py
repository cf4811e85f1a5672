"""`mlops bench ...`: benchmark scripts whose figures the README reports."""

from __future__ import annotations

import argparse
import json


def bench_drift(args: argparse.Namespace) -> int:
    from mlops_assets.bench.drift_bench import bench, print_report

    result = bench(args.rows, args.numerical, args.categorical)
    print_report(result)
    if args.json:
        print(json.dumps(result))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="run a benchmark").add_subparsers(dest="benchmark", required=True)
    p = bench.add_parser("drift", help="drift decision vs Evidently DataDriftPreset")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--numerical", type=int, default=15)
    p.add_argument("--categorical", type=int, default=5)
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    p.set_defaults(handler=bench_drift)
