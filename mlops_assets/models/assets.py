"""Training, registry, gates and promotion assets of a declared pipeline (lifecycle steps 4-5).

``<pipeline>/model`` trains and registers a version; its materialization is a
pointer into the registry (name, version, URI), never the model. Its gates are
blocking asset checks, so ``<pipeline>/promotion`` (which moves the alias) only
runs after every gate passed: a run that fails or is killed before then leaves
the aliases as they were. ``<pipeline>_approve`` is the approval for policy
``manual``, with the version and approver as run config.
"""

# no `from __future__ import annotations` here: Dagster reads the Config and resource annotations of
# the asset functions when they are defined

import dagster as dg
from pydantic import Field

from mlops_assets.core.declaration import DeclarationError, PipelineDeclaration
from mlops_assets.core.feature_contract import load_feature_module
from mlops_assets.core.metrics import METRICS
from mlops_assets.core.names import (
    PRIORITY,
    PRIORITY_TAG,
    REASON_TAG,
    TRAINING_TAG,
    TRIGGER_TAG,
    approve_job_name,
    features_key,
    model_key,
    promotion_key,
    step_name,
    train_job_name,
)
from mlops_assets.models import gates, promotion, training
from mlops_assets.models import registration as registry
from mlops_assets.models.engine import train_as_planned
from mlops_assets.models.ray_training import RayCapacityError
from resources.delta_lake import DeltaLakeResource
from resources.mlflow_registry import MlflowRegistryResource


def check_model_declaration(decl: PipelineDeclaration) -> None:
    """What the declaration's own validation cannot see: metric names per task, the split sizes."""
    known = METRICS[decl.target.task]
    for field, names in (("gates.floors", list(decl.gates.floors)), ("gates.compare_metrics", decl.gates.compare_metrics)):
        unknown = sorted(n for n in names if n not in known)
        if unknown:
            raise DeclarationError(
                f"pipeline {decl.name}: {field} names metrics {unknown} that a {decl.target.task} model does not have; "
                f"known: {', '.join(sorted(known))}"
            )
    needed = decl.training.validation_days + decl.gates.holdout_days
    if decl.training.window_days <= needed:
        raise DeclarationError(
            f"pipeline {decl.name}: training.window_days ({decl.training.window_days}) must be greater than "
            f"training.validation_days + gates.holdout_days ({needed}) to leave days to train on"
        )


class TrainConfig(dg.Config):
    # no pattern: pydantic checked it only as the step started (a traceback, and `mlops status` named Dagster's
    # wrapper), and a date pattern refused an hourly pipeline's keys; a key that is no featurized partition fails
    # the step with one line naming it
    end_partition: str = Field(
        default="",
        description="Last partition of the window, a partition key (2013-03-31; 2024-03-03-05:00 hourly); empty: the newest featurized one.",
    )


class ApprovalConfig(dg.Config):
    version: int = Field(ge=1, description="The model version to approve as champion.")
    approver: str = Field(min_length=1, description="Who approves.")
    reason: str = Field(min_length=1, description="Why.")


def run_trigger(run: dg.DagsterRun) -> str:
    """Why this run was started, from the tags sensors and schedules put on it, for the audit log's why."""
    tags = run.tags
    source = tags.get("dagster/sensor_name") or tags.get("dagster/schedule_name")
    trigger, reason = tags.get(TRIGGER_TAG), tags.get(REASON_TAG)
    parts = [p for p in (f"by {source}" if source else "", trigger or "", reason or "") if p]
    return f" (run started {': '.join(parts)})" if parts else ""


def _metadata_value(value):
    if isinstance(value, (dict, list)):
        return dg.MetadataValue.json(value)
    return "none" if value is None else value


def build_model_definitions(decl: PipelineDeclaration, partitions: dg.PartitionsDefinition) -> dg.Definitions:
    check_model_declaration(decl)
    module = load_feature_module(decl)
    key = model_key(decl)
    t, g = decl.training, decl.gates

    @dg.asset(
        key=key,
        deps=[features_key(decl)],
        group_name=decl.name,
        kinds={"lightgbm", "mlflow"},
        description=(
            f"LightGBM {decl.target.task} model of {decl.target.column}, trained on the last {t.window_days} featurized {decl.partitioning.unit}s "
            f"(the newest {g.holdout_days} held out for the gates, the {t.validation_days} before for early stopping). "
            "Registered in MLflow; the value is a pointer (name, version, URI)."
        ),
    )
    def model(context: dg.AssetExecutionContext, config: TrainConfig, delta: DeltaLakeResource, mlflow: MlflowRegistryResource):
        run_id = context.run.run_id
        try:
            plan = training.plan_training(decl, delta, config.end_partition or None)
            frame = training.read_window(plan, delta)
            data = training.prepare(frame, plan, t.min_rows)
        except (training.TrainingDataError, DeclarationError, LookupError) as err:  # DeclarationError: training.params
            raise dg.Failure(str(err), allow_retries=False) from None
        context.log.info(
            f"window {plan.partition_start}..{plan.partition_end} at features v{plan.features_version}: "
            f"{data.train.rows} train, {data.validation.rows} validation, {data.holdout.rows} hold-out rows; "
            f"{data.rows_without_target} rows excluded ({plan.missing_reason})"
        )
        try:
            trained = train_as_planned(plan, data, delta)
        except (training.TrainingDataError, RayCapacityError) as err:
            raise dg.Failure(str(err), allow_retries=False) from None
        if plan.engine == "ray":
            context.log.info(f"trained on Ray Train with {plan.ray_workers} workers")
        tags = registry.version_tags(
            plan, trained, declaration_hash=decl.fingerprint(), feature_code_hash=module.code_hash(), dagster_run_id=run_id
        )
        registered = registry.log_and_register(mlflow, plan, data, trained, tags, sample=frame.head(1000))
        pointer = registered.pointer
        return dg.MaterializeResult(
            metadata={
                **pointer.to_metadata(),
                "mlflow_run": dg.MetadataValue.url(mlflow.run_url(registered.experiment_id, pointer.run_id)),
                "mlflow_model_version": dg.MetadataValue.url(mlflow.model_url(pointer.name, pointer.version)),
                "validation_metrics": dg.MetadataValue.json(trained.validation_metrics),
                "best_iteration": trained.best_iteration,
                "training_engine": plan.engine if plan.engine == "local" else f"ray ({plan.ray_workers} workers)",
                "partition_range": f"{plan.partition_start}..{plan.partition_end}",
                "validation_from": plan.validation_start,
                "holdout_from": plan.holdout_start,
                "features_table": plan.features_table,
                "features_delta_version": plan.features_version,
                "train_rows": data.train.rows,
                "validation_rows": data.validation.rows,
                "holdout_rows": data.holdout.rows,
                "rows_without_target": data.rows_without_target,
                "rows_without_target_reason": plan.missing_reason,
                "feature_columns": ", ".join(plan.feature_columns),
                "categorical_features": ", ".join(plan.categorical_features) or "none",
                "declaration_hash": tags["mlops.declaration_hash"],
                "feature_code_hash": tags["mlops.feature_code_hash"],
                "git_commit": tags["mlops.git_commit"],
            }
        )

    floors = ", ".join(f"{k} {v}" for k, v in g.floors.items()) or "none declared"
    specs = [
        dg.AssetCheckSpec(gates.FLOORS, asset=key, blocking=True, description=f"Hold-out metrics within the declared floors ({floors})."),
        dg.AssetCheckSpec(
            gates.NO_REGRESSION,
            asset=key,
            blocking=True,
            description=f"Hold-out {', '.join(gates.compared_metrics(decl))} no worse than the champion's by more than {g.max_regression:.1%}, on the same rows.",
        ),
        dg.AssetCheckSpec(
            gates.DATA_CHECKS,
            asset=key,
            blocking=True,
            description=f"Every {decl.partitioning.unit} of the window passed raw validation (at most {decl.validation.max_failure_rate:.1%} quarantined).",
        ),
    ]
    if g.fairness is not None:
        f = g.fairness
        specs.append(
            dg.AssetCheckSpec(
                gates.FAIRNESS,
                asset=key,
                blocking=True,
                description=f"Hold-out {f.metric} per {', '.join(f.groups)}: the largest relative gap between groups at most {f.max_gap:.0%}.",
            )
        )

    @dg.multi_asset_check(name=step_name(decl, "gates"), specs=specs)
    def model_gates(context: dg.AssetCheckExecutionContext, delta: DeltaLakeResource, mlflow: MlflowRegistryResource):
        run_id = context.run.run_id
        pointer = registry.run_pointer(context.instance, key, run_id)
        evaluation = gates.evaluate(decl, delta, mlflow, pointer.version)
        promotion.record_evaluation(
            delta, mlflow, evaluation, actor=f"dagster:{run_id}", dagster_run_id=run_id, trigger=run_trigger(context.run)
        )
        context.log.info(f"{pointer.uri}: gates {'passed' if evaluation.passed else 'FAILED: ' + ', '.join(evaluation.failed)}")
        for gate in evaluation.gates:
            yield dg.AssetCheckResult(
                asset_key=key,
                check_name=gate.name,
                passed=gate.passed,
                severity=dg.AssetCheckSeverity.ERROR,
                description=gate.description,
                metadata={
                    "model_version": pointer.version,
                    "model_uri": pointer.uri,
                    "champion_version": evaluation.champion_version or "none",
                    "holdout_rows": evaluation.holdout_rows,
                    "challenger_holdout": dg.MetadataValue.json(evaluation.challenger_metrics),
                    "champion_holdout": _metadata_value(evaluation.champion_metrics),
                    **{k: _metadata_value(v) for k, v in gate.metadata.items()},
                },
            )

    @dg.asset(
        key=promotion_key(decl),
        deps=[key],
        group_name=decl.name,
        kinds={"mlflow"},
        description=(
            f"Policy {decl.promotion.policy}: "
            + (
                "moves the `champion` alias to a model that passed its gates."
                if decl.promotion.policy == "auto"
                else f"sets the `challenger` alias; `champion` moves on approval ({approve_job_name(decl)} or `mlops approve`)."
            )
        ),
    )
    def promote(context: dg.AssetExecutionContext, delta: DeltaLakeResource, mlflow: MlflowRegistryResource):
        run_id = context.run.run_id
        pointer = registry.run_pointer(context.instance, key, run_id)
        try:
            decision = promotion.promote_after_gates(
                decl,
                delta,
                mlflow,
                pointer.version,
                actor=f"dagster:{run_id}",
                dagster_run_id=run_id,
                trigger=run_trigger(context.run),
            )
        except ValueError as err:
            raise dg.Failure(str(err), allow_retries=False) from None
        context.log.info(decision.message)
        return dg.MaterializeResult(
            metadata={
                "policy": decl.promotion.policy,
                "action": decision.action,
                "model_version": str(decision.version),
                "from_version": str(decision.from_version) if decision.from_version else "none",
                "decision": decision.message,
                "model_uri": pointer.uri,
            }
        )

    @dg.op(name=step_name(decl, "approve"), description="Approve a model version as champion (policy manual).")
    def approve_op(context: dg.OpExecutionContext, config: ApprovalConfig, delta: DeltaLakeResource, mlflow: MlflowRegistryResource):
        try:
            decision = promotion.approve(
                decl.name,
                delta,
                mlflow,
                config.version,
                config.approver,
                config.reason,
                dagster_run_id=context.run.run_id,
                rollout=decl.promotion.rollout,
            )
        except (ValueError, LookupError) as err:
            raise dg.Failure(str(err), allow_retries=False) from None
        context.log.info(decision.message)
        context.log_event(
            dg.AssetMaterialization(
                asset_key=promotion_key(decl),
                description=decision.message,
                metadata={
                    "policy": decl.promotion.policy,
                    "action": decision.action,
                    "model_version": str(decision.version),
                    "from_version": str(decision.from_version) if decision.from_version else "none",
                    "approver": config.approver,
                    "reason": config.reason,
                    "model_uri": f"models:/{decl.name}/{decision.version}",
                },
            )
        )

    @dg.job(name=approve_job_name(decl), description=f"Approve a {decl.name} model version: moves `champion` to it.")
    def approve_job():
        approve_op()

    train_job = dg.define_asset_job(
        train_job_name(decl),
        selection=dg.AssetSelection.assets(key, promotion_key(decl)),
        description="Train, register, gate and promote (or put up for approval) a model.",
        tags={TRAINING_TAG: decl.name, PRIORITY_TAG: PRIORITY["train"]},  # the run queue allows one training run per pipeline at a time
        executor_def=dg.in_process_executor,  # steps in the run's own process: a subprocess per step cost ~3 s each of the lead time
    )
    return dg.Definitions(assets=[model, promote], asset_checks=[model_gates], jobs=[train_job, approve_job])
