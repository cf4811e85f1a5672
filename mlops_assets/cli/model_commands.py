"""`mlops` commands about models: status, gate, approve, rollback, abort, history, reproduce.

They act on the same registry and audit log as the Dagster assets, through the
same functions, configured from the environment ($MLOPS_HOME, MLOPS_DELTA_URI,
MLOPS_MLFLOW_TRACKING_URI, MLOPS_MLFLOW_REGISTRY_URI).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
from pathlib import Path

import polars as pl

from mlops_assets.cli.arg_types import event_count
from mlops_assets.cli.data_commands import pipeline_by_name
from mlops_assets.core.declaration import load_declarations
from mlops_assets.core.home import MlopsHome
from resources.audit_log import history as audit_history
from resources.delta_lake import DeltaLakeResource
from resources.mlflow_registry import MlflowRegistryResource


def delta_lake() -> DeltaLakeResource:
    if not os.environ.get("MLOPS_DELTA_URI"):
        MlopsHome.from_env().require_platform()
    return DeltaLakeResource(root=os.environ.get("MLOPS_DELTA_URI", ""))


def mlflow_registry() -> MlflowRegistryResource:
    if not os.environ.get("MLOPS_MLFLOW_TRACKING_URI"):
        MlopsHome.from_env().require_platform()
    return MlflowRegistryResource(
        tracking_uri=os.environ.get("MLOPS_MLFLOW_TRACKING_URI", ""),
        registry_uri=os.environ.get("MLOPS_MLFLOW_REGISTRY_URI", ""),
    )


def dagster_folder() -> Path | None:
    """The platform's Dagster instance folder ($DAGSTER_HOME, else the home's dagster/); None where none was made."""
    folder = Path(os.environ.get("DAGSTER_HOME") or MlopsHome.from_env().dagster)
    return folder if folder.is_dir() else None


def version_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"version must be a positive integer, not '{text}'") from None
    if not 1 <= value < 2**63:  # the registry stores a 64-bit integer
        raise ValueError(f"version must be a positive integer, not '{text}'")
    return value


def _fmt_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())) or "none"


def status(args: argparse.Namespace) -> int:
    from mlops_assets.core.names import CHALLENGER, CHAMPION
    from mlops_assets.models.promotion import describe

    names = [pipeline_by_name(args.pipeline).name] if args.pipeline else [d.name for d in load_declarations()]
    registry = mlflow_registry()
    folder = dagster_folder()
    for name in names:
        decl = pipeline_by_name(name)
        print(f"{name} (policy {decl.promotion.policy}, {decl.target.task} on {decl.target.column})")
        for alias in (CHAMPION, CHALLENGER):
            d = describe(registry, name, alias)
            if d is None:
                print(f"  {alias}: none")
                continue
            if not d["trained_here"]:
                print(
                    f"  {alias}: v{d['version']}, not trained by the platform (no training plan): point `{alias}` at a version it trained"
                )
                continue
            print(f"  {alias}: v{d['version']} ({d['status']})")
            print(f"    validation: {_fmt_metrics(d['validation_metrics'])}")
            print(f"    hold-out:   {_fmt_metrics(d['holdout_metrics'])}")
            print(f"    data:       partitions {d['partitions']} (hold-out from {d['holdout_from']}), {d['features']}")
            print(f"    lineage:    git {d['git_commit']}, dagster run {d['dagster_run_id']}, {d['feature_columns']} features")
            if d["erased"]:  # its data line names a Delta version the erasure's vacuum may have removed
                print(
                    f"    erased:     rows it trained on were erased (erasure {d['erased']}, see `mlops history {name}`): "
                    "it cannot be reproduced, and a retraining on the current data replaces it"
                )
        for line in rollout_lines(decl, delta_lake()):
            print(line)
        if folder is not None:
            print(training_line(folder, decl))
    return 0


def training_line(folder: Path, decl) -> str:
    """The latest training run, failed ones with their reason: they leave nothing in the registry or audit log."""
    import dagster as dg

    from mlops_assets.models.training_runs import last_training

    with dg.DagsterInstance.from_config(str(folder)) as instance:
        run = last_training(instance, decl)
    return f"  last training: {run.describe()}" if run else "  last training: none"


def rollout_lines(decl, delta: DeltaLakeResource) -> list[str]:
    """The rollout in progress, with the guard values read from the live traffic so far (none: no lines)."""
    from mlops_assets.core.declaration import RolloutGuardsSpec
    from resources import audit_log, rollouts

    state = rollouts.current(audit_log.history(delta, decl.name))
    if state is None:
        return []
    guards = decl.promotion.rollout.guards if decl.promotion.rollout else RolloutGuardsSpec()
    signals = rollouts.read_signals(delta, state, guards, decl.target.task, decl.target.column)
    return [
        f"  rollout: {state.describe()}, beside champion v{state.from_version}",
        f"    requests:   new {signals.canary_requests} this step, champion {signals.champion_requests} since the start",
        *(f"    guard:      {reading.describe()}" for reading in signals.readings),
    ]


def approve(args: argparse.Namespace) -> int:
    from mlops_assets.models.promotion import approve as approve_version

    decl = pipeline_by_name(args.pipeline)
    decision = approve_version(
        decl.name, delta_lake(), mlflow_registry(), version_number(args.version), args.by, args.reason, rollout=decl.promotion.rollout
    )
    print(f"{decl.name}: {decision.message}")
    return 0


def gate(args: argparse.Namespace) -> int:
    """The gates of one version against the champion now, as the gates check runs them for the version it trained:
    after the champion moved, a version waiting for approval needs them again before it can be approved."""
    from mlops_assets.models.gates import evaluate
    from mlops_assets.models.promotion import await_approval_after_regate, record_evaluation

    decl = pipeline_by_name(args.pipeline)
    delta, registry = delta_lake(), mlflow_registry()
    evaluation = evaluate(decl, delta, registry, str(version_number(args.version)))
    record_evaluation(delta, registry, evaluation, actor=f"cli:{args.by}", dagster_run_id="")
    against = f"champion v{evaluation.champion_version}" if evaluation.champion_version else "no champion"
    if evaluation.is_champion:  # it said "against no champion" of the champion itself
        against = "nothing: it is the champion"
    for g in evaluation.gates:
        print(f"  {g.name:<22}{'passed' if g.passed else 'FAILED'}  {g.description}")
    if not evaluation.passed:
        print(f"{decl.name}: v{evaluation.version} failed its gates against {against}: {', '.join(evaluation.failed)}")
        return 1
    print(f"{decl.name}: v{evaluation.version} passed its gates against {against}")
    waiting = await_approval_after_regate(delta, registry, evaluation, actor=f"cli:{args.by}")
    if waiting is not None:
        print(f"{decl.name}: {waiting.message}; `mlops approve {decl.name} {evaluation.version}` makes it champion")
    return 0


def rollback(args: argparse.Namespace) -> int:
    from mlops_assets.models.promotion import rollback as rollback_champion

    decl = pipeline_by_name(args.pipeline)
    decision = rollback_champion(decl.name, delta_lake(), mlflow_registry(), args.by, args.reason)
    print(f"{decl.name}: {decision.message}")
    return 0


def abort(args: argparse.Namespace) -> int:
    from mlops_assets.models.promotion import abort_rollout

    decl = pipeline_by_name(args.pipeline)
    decision = abort_rollout(decl.name, delta_lake(), mlflow_registry(), args.by, args.reason)
    print(f"{decl.name}: {decision.message}")
    return 0


def history(args: argparse.Namespace) -> int:
    decl = pipeline_by_name(args.pipeline)
    events = audit_history(delta_lake(), decl.name)
    if args.limit:
        events = events.tail(args.limit)
    if args.json:
        print(json.dumps(events.with_columns(pl.col("at").dt.to_string("%Y-%m-%dT%H:%M:%S%.6fZ")).to_dicts(), indent=2))
        return 0
    if events.height == 0:
        print(f"{decl.name}: no promotions, rejections, approvals or rollbacks yet")
        return 0
    for e in events.iter_rows(named=True):
        if e["alias"] and e["action"] == "alias_removed":  # printed as a move to the version: "challenger v- -> v4"
            moved = f" {e['alias']} v{e['model_version']} -> -"
        elif e["action"].startswith("rollout_") or e["action"] == "traffic":
            # their from_version is the champion the version rolls out beside, not the alias's previous holder
            beside = f" beside champion v{e['from_version']}" if e["from_version"] is not None else ""
            moved = f" v{e['model_version']}{beside}"
        elif e["alias"]:
            moved = f" {e['alias']} v{e['from_version'] or '-'} -> v{e['model_version']}"
        else:  # an erasure is about data, not a version: it printed as "vNone"
            moved = f" v{e['model_version']}" if e["model_version"] is not None else ""
        gates = f" failed gates: {e['failed_gates']};" if e["failed_gates"] else ""
        print(f"{e['at']:%Y-%m-%d %H:%M:%S} UTC  {e['action']:<14}{moved}  by {e['actor']}:{gates} {e['reason']}")
        metrics = json.loads(e["metrics"] or "{}")
        holdout = metrics.get("holdout") or {}
        if holdout:
            print(f"{'':25}hold-out: {_fmt_metrics(holdout)}")
        if e["action"] == "erase":  # `mlops reproduce` of a tagged version names its erasure and points here
            print(f"{'':25}{_erasure_line(metrics)}")
    return 0


def _erasure_line(metrics: dict) -> str:
    """An erase row's id, rows deleted per table and tagged versions (the predicate, which names the subject: --json)."""
    rows = ", ".join(f"{table} {n}" for table, n in (metrics.get("rows_deleted") or {}).items()) or "none"
    tagged = ", ".join(f"v{v}" for v in metrics.get("tagged_versions") or [])
    return f"erasure {metrics.get('erasure_id', '?')}: rows deleted {rows}" + (f"; trained on them: {tagged}" if tagged else "")


def reproduce(args: argparse.Namespace) -> int:
    from mlops_assets.models.reproduce import reproduce as reproduce_version

    decl = pipeline_by_name(args.pipeline)
    result = reproduce_version(decl.name, version_number(args.version), delta_lake(), mlflow_registry())
    print(result.report())
    return 0 if result.comparison.identical else 1


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def erase(args: argparse.Namespace) -> int:
    from mlops_assets.governance.erasure import erase as erase_subject

    result = erase_subject(pipeline_by_name(args.pipeline), delta_lake(), mlflow_registry(), args.where, args.by, args.reason, args.dry_run)
    print(result.report())
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("status", help="champion and challenger of each model: metrics and data ranges")
    p.add_argument("pipeline", nargs="?", help="one pipeline (default: all declared)")
    p.set_defaults(handler=status)

    p = commands.add_parser("gate", help="run a model version's gates against the champion now and record them")
    p.add_argument("pipeline")
    p.add_argument("version")
    p.add_argument("--by", default=_who(), help="who runs them (default: the current user)")
    p.set_defaults(handler=gate)

    p = commands.add_parser("approve", help="approve a model version that passed its gates: it becomes champion")
    p.add_argument("pipeline")
    p.add_argument("version")
    p.add_argument("--by", required=True, help="who approves")
    p.add_argument("--reason", required=True, help="why")
    p.set_defaults(handler=approve)

    p = commands.add_parser("rollback", help="move champion back to the previous champion")
    p.add_argument("pipeline")
    p.add_argument("--by", default=_who(), help="who rolls back (default: the current user)")
    p.add_argument("--reason", default="rollback to the previous champion", help="why")
    p.set_defaults(handler=rollback)

    p = commands.add_parser("abort", help="end the rollout in progress: the champion stays and answers alone")
    p.add_argument("pipeline")
    p.add_argument("--by", default=_who(), help="who aborts (default: the current user)")
    p.add_argument("--reason", required=True, help="why")
    p.set_defaults(handler=abort)

    p = commands.add_parser("history", help="the audit log of a model: promotions, rejections, approvals, rollbacks")
    p.add_argument("pipeline")
    p.add_argument("--limit", type=event_count, default=0, help="only the last N events (default 0: all)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=history)

    p = commands.add_parser("erase", help="erase a data subject's rows from every table of a pipeline (GDPR)")
    p.add_argument("pipeline")
    p.add_argument("--where", required=True, help='which rows, over declared columns: tailnum = "N24211" [and ...]')
    p.add_argument("--by", required=True, help="who asks for the erasure")
    p.add_argument("--reason", required=True, help="why (the request, ticket, legal basis)")
    p.add_argument("--dry-run", action="store_true", help="count the rows and affected model versions; change nothing")
    p.set_defaults(handler=erase)

    p = commands.add_parser("reproduce", help="re-train a version from its recorded data and compare predictions")
    p.add_argument("pipeline")
    p.add_argument("version")
    p.set_defaults(handler=reproduce)
