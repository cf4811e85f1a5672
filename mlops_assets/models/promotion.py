"""Moving the registry aliases: promotion by policy, approval, rollback.

Each decision validates first and changes nothing when it refuses; the alias
move and its audit row happen under the pipeline's promotion lease (one decision
at a time on every registry backend) and the registry's write lock. ``champion`` is
what serving runs; ``challenger`` is a version that passed the gates and waits
for approval (policy ``manual``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from mlops_assets.core.declaration import PipelineDeclaration, RolloutSpec
from mlops_assets.core.names import (
    CHALLENGER,
    CHAMPION,
    ERASED_TAG,
    FEATURE_COLUMNS_TAG,
    GATES_ARTIFACT,
    GATES_CHAMPION_TAG,
    GATES_TAG,
    PLAN_TAG,
    STATUS_TAG,
)
from mlops_assets.models.gates import Evaluation
from resources.audit_log import AuditEvent, champion_history, history, passed_gates, record
from resources.delta_lake import DeltaLakeResource
from resources.mlflow_registry import MlflowRegistryResource
from resources.promotion_lock import promotion_lease
from resources.registered_models import alias_version, drop_challenger, get_version, metrics_of
from resources.rollouts import Rollout, step_metrics
from resources.rollouts import current as current_rollout


@dataclass(frozen=True)
class Decision:
    action: str
    version: int
    from_version: int | None
    message: str


def _int(version: str | int | None) -> int | None:
    return None if version is None else int(version)


def evaluation_record(evaluation: Evaluation) -> dict:
    return {
        "version": evaluation.version,
        "champion_version": evaluation.champion_version,
        "holdout_rows": evaluation.holdout_rows,
        "challenger_metrics": evaluation.challenger_metrics,
        "champion_metrics": evaluation.champion_metrics,
        "gates": [{"name": g.name, "passed": g.passed, "description": g.description, "metadata": g.metadata} for g in evaluation.gates],
    }


def record_evaluation(
    delta: DeltaLakeResource,
    registry: MlflowRegistryResource,
    evaluation: Evaluation,
    actor: str,
    dagster_run_id: str,
    trigger: str = "",
) -> None:
    """Write the gate outcome on the version; a failure is a rejection in the audit log."""
    name, version = evaluation.pipeline, evaluation.version
    with registry.writing() as client:
        mv = get_version(client, name, version)
        for gate in evaluation.gates:
            client.set_model_version_tag(name, version, f"gate.{gate.name}", "passed" if gate.passed else "failed")
        for k, v in evaluation.challenger_metrics.items():
            client.set_model_version_tag(name, version, f"holdout.{k}", repr(float(v)))
        if mv.run_id:  # every gate's full comparison, for the model card
            client.log_dict(mv.run_id, evaluation_record(evaluation), GATES_ARTIFACT)
        if CHAMPION in mv.aliases:  # checks re-run on the serving version: record, but decide nothing
            return
        # what the gates compared with first, the verdict last: a verdict is never without its comparison. A waiting
        # challenger's are rewritten too (nothing else is decided for it): after the champion moved, gates re-run
        # against the new one are what lets it be approved
        client.set_model_version_tag(name, version, GATES_CHAMPION_TAG, str(evaluation.champion_version or "none"))
        client.set_model_version_tag(name, version, GATES_TAG, "passed" if evaluation.passed else "failed: " + ",".join(evaluation.failed))
        if _status_stays(mv):
            return
        client.set_model_version_tag(name, version, STATUS_TAG, "passed" if evaluation.passed else "rejected")
        if not evaluation.passed:
            reasons = "; ".join(f"{g.name}: {g.description}" for g in evaluation.gates if not g.passed) + trigger
            record(
                delta,
                name,
                AuditEvent(
                    "reject",
                    int(version),
                    actor=actor,
                    reason=reasons,
                    from_version=_int(evaluation.champion_version),
                    failed_gates=tuple(evaluation.failed),
                    metrics={"holdout": evaluation.challenger_metrics, "champion_holdout": evaluation.champion_metrics},
                    dagster_run_id=dagster_run_id,
                    mlflow_run_id=mv.run_id or "",
                ),
            )


def _status_stays(mv) -> bool:
    """A version whose status gates run again leave as it is: it holds an alias (its status is that decision's), or a
    rollout's guards rolled it back on live traffic."""
    return bool(mv.aliases) or mv.tags.get(STATUS_TAG) == "rolled_back"


def await_approval_after_regate(
    delta: DeltaLakeResource, registry: MlflowRegistryResource, evaluation: Evaluation, actor: str
) -> Decision | None:
    """Gates run again by hand (`mlops gate`) that passed a version holding no alias: it waits for approval, on record
    in the audit log as a passing promotion under policy manual is (an approval reads the log, not the tag). None
    when nothing waits: the gates failed, the version holds an alias, or a rollout's guards rolled it back."""
    name, version = evaluation.pipeline, evaluation.version
    if not evaluation.passed:
        return None
    with promotion_lease(delta, name), registry.writing() as client:
        mv = get_version(client, name, version)
        if _status_stays(mv):
            return None
        champion = _int(evaluation.champion_version)
        why = f"gates passed again against {f'champion v{champion}' if champion else 'no champion'}: waiting for approval"
        metrics = {"validation": metrics_of(mv), "holdout": metrics_of(mv, "holdout.")}
        event = AuditEvent("await_approval", int(version), actor=actor, reason=why, from_version=champion, metrics=metrics)
        record(delta, name, event)
        client.set_model_version_tag(name, mv.version, STATUS_TAG, "awaiting_approval")
    return Decision("await_approval", int(version), champion, f"v{version} waits for approval ({why})")


class StaleGates(ValueError):
    """The champion moved after a version's gates ran; promoting it would skip the comparison."""


def _named(version: str) -> str:
    return "none" if version == "none" else f"v{version}"


def stale_comparison(mv, champion) -> str | None:
    """Why the version's gates no longer compare it with the champion (`champion`: its model version or None),
    or None while they do. Gates that recorded no comparison are stale too: their verdict was written without it."""
    compared_with = mv.tags.get(GATES_CHAMPION_TAG)
    now = str(champion.version) if champion is not None else "none"
    if compared_with == now:
        return None
    was = f"champion {_named(compared_with)}" if compared_with is not None else "no recorded champion"
    return (
        f"gates compared v{mv.version} with {was}, but the champion is now {_named(now)}; re-run the gates to compare "
        f"with it (`mlops gate {mv.name} {mv.version}`)"
    )


def _require_passed(mv, what: str) -> None:
    gates = mv.tags.get(GATES_TAG)
    if gates is None:
        raise ValueError(f"model {mv.name} v{mv.version} has not been through the gates; it cannot be {what}")
    if gates != "passed":
        raise ValueError(f"model {mv.name} v{mv.version} was rejected by the gates ({gates}); it cannot be {what}")


def promote_after_gates(
    decl: PipelineDeclaration,
    delta: DeltaLakeResource,
    registry: MlflowRegistryResource,
    version: str,
    actor: str,
    dagster_run_id: str = "",
    trigger: str = "",
) -> Decision:
    """Policy auto: `champion` moves to the version. Policy manual: it becomes the `challenger`."""
    name = decl.name
    with promotion_lease(delta, name), registry.writing() as client:
        mv = get_version(client, name, version)
        _require_passed(mv, "promoted")
        metrics = {"validation": metrics_of(mv), "holdout": metrics_of(mv, "holdout.")}
        alias = CHAMPION if decl.promotion.policy == "auto" else CHALLENGER
        current = alias_version(client, name, alias)
        if current is not None and current.version == mv.version:
            return Decision("none", int(version), int(version), f"v{version} already is the {alias}")
        why = stale_comparison(mv, current) if alias == CHAMPION else None  # an approval checks it (manual)
        if why is not None:
            # another promotion won the race since these gates ran: their comparison is stale
            record(
                delta,
                name,
                AuditEvent(
                    "reject",
                    int(mv.version),
                    actor=actor,
                    reason=why + trigger,
                    from_version=_int(current.version if current else None),
                    failed_gates=("stale_comparison",),
                    dagster_run_id=dagster_run_id,
                    mlflow_run_id=mv.run_id or "",
                ),
            )
            client.set_model_version_tag(name, mv.version, STATUS_TAG, "stale")
            raise StaleGates(f"model {name} v{mv.version} not promoted: {why}")
        rollout = decl.promotion.rollout
        if alias == CHAMPION and rollout is not None and current is not None:
            return start_rollout(
                delta, client, name, rollout, mv, int(current.version), actor, "gates passed; policy auto" + trigger, dagster_run_id
            )
        if alias == CHAMPION:
            action, why, status = "promote", "gates passed; policy auto", "promoted"
        else:
            action, why, status = "await_approval", "gates passed; policy manual: waiting for approval", "awaiting_approval"
            ongoing = current_rollout(history(delta, name))
            if ongoing is not None:
                # the alias is the rollout's: its canary share must keep reaching the version it judges
                why += f"; the {CHALLENGER} alias stays with v{ongoing.version}, rolling out (approving v{mv.version} supersedes it)"
                alias = None
        from_version = _int(current.version if current else None)
        # the audit row first: a failure after it leaves a recorded move the registry lacks (rollback and
        # `mlops status` say so), never a move the history lacks
        record(
            delta,
            name,
            AuditEvent(
                action,
                int(mv.version),
                actor=actor,
                reason=why + trigger,
                alias=alias,
                from_version=from_version,
                metrics=metrics,
                dagster_run_id=dagster_run_id,
                mlflow_run_id=mv.run_id or "",
            ),
        )
        if alias is not None:
            client.set_registered_model_alias(name, alias, mv.version)
        client.set_model_version_tag(name, mv.version, STATUS_TAG, status)
    if alias is None:
        return Decision(action, int(mv.version), from_version, f"v{mv.version} waits for approval ({why})")
    return Decision(
        action, int(mv.version), from_version, f"{alias} -> v{mv.version} (was {f'v{from_version}' if from_version else 'none'})"
    )


def start_rollout(
    delta: DeltaLakeResource,
    client,
    pipeline: str,
    rollout: RolloutSpec,
    mv,
    champion: int,
    actor: str,
    reason: str,
    dagster_run_id: str = "",
) -> Decision:
    """The version becomes the `challenger` at the rollout's first share; the rollout sensor takes it from there.
    A rollout still in progress for another version is aborted (superseded), in the same audit commit."""
    ongoing = current_rollout(history(delta, pipeline))
    if ongoing is not None and ongoing.version == int(mv.version):
        return Decision("none", ongoing.version, champion, f"v{mv.version} is already rolling out: {ongoing.describe()}")
    events = []
    if ongoing is not None:
        events.append(
            AuditEvent(
                "rollout_abort",
                ongoing.version,
                actor=actor,
                reason=f"superseded by v{mv.version}",
                alias=CHALLENGER,
                from_version=ongoing.from_version,
                dagster_run_id=dagster_run_id,
            )
        )
    metrics = {"validation": metrics_of(mv), "holdout": metrics_of(mv, "holdout.")}
    events.append(
        AuditEvent(
            "rollout_start",
            int(mv.version),
            actor=actor,
            reason=reason,
            alias=CHALLENGER,
            from_version=champion,
            metrics=step_metrics(0, rollout.steps, **metrics),
            dagster_run_id=dagster_run_id,
            mlflow_run_id=mv.run_id or "",
        )
    )
    record(delta, pipeline, *events)  # before the alias moves: no move without its history
    client.set_registered_model_alias(pipeline, CHALLENGER, mv.version)
    client.set_model_version_tag(pipeline, mv.version, STATUS_TAG, "rolling_out")
    if ongoing is not None:
        client.set_model_version_tag(pipeline, str(ongoing.version), STATUS_TAG, "superseded")
    return Decision(
        "rollout_start",
        int(mv.version),
        champion,
        f"challenger -> v{mv.version}, rolling out beside champion v{champion}: {rollout.steps[0]:.0%} of traffic first "
        f"(steps {', '.join(f'{s:.0%}' for s in rollout.steps)})",
    )


def approve(
    pipeline: str,
    delta: DeltaLakeResource,
    registry: MlflowRegistryResource,
    version: str | int,
    by: str,
    reason: str,
    dagster_run_id: str = "",
    rollout: RolloutSpec | None = None,
) -> Decision:
    """A person's approval: `champion` moves to a version that passed the gates (by the audit log, not an
    editable tag); with a declared rollout, the version starts rolling out instead."""
    if not by.strip():
        raise ValueError("an approval needs the approver's name (--by)")
    if not reason.strip():
        raise ValueError("an approval needs a reason (--reason)")
    with promotion_lease(delta, pipeline), registry.writing() as client:
        mv = get_version(client, pipeline, version)
        _require_passed(mv, "approved")
        if not passed_gates(history(delta, pipeline), int(mv.version)):
            raise ValueError(
                f"model {pipeline} v{mv.version} has no record of passing its gates in the audit log "
                "(its gate tag alone can be edited by anyone); run its gates first"
            )
        current = alias_version(client, pipeline, CHAMPION)
        if current is not None and current.version == mv.version:
            raise ValueError(f"model {pipeline} v{mv.version} already is the champion")
        stale = stale_comparison(mv, current)
        if stale is not None:  # a person approves what the gates showed them, against the champion it would replace
            raise StaleGates(f"model {pipeline} v{mv.version} cannot be approved: {stale}")
        if rollout is not None and current is not None:
            return start_rollout(delta, client, pipeline, rollout, mv, int(current.version), by, f"approved: {reason}", dagster_run_id)
        challenger = alias_version(client, pipeline, CHALLENGER)
        from_version = _int(current.version if current else None)
        metrics = {"validation": metrics_of(mv), "holdout": metrics_of(mv, "holdout.")}
        events = [
            AuditEvent(
                "approve",
                int(mv.version),
                actor=by,
                reason=reason,
                alias=CHAMPION,
                from_version=from_version,
                metrics=metrics,
                dagster_run_id=dagster_run_id,
                mlflow_run_id=mv.run_id or "",
            )
        ]
        moves_challenger = challenger is not None and challenger.version == mv.version
        if moves_challenger:
            events.append(
                AuditEvent(
                    "alias_removed",
                    int(mv.version),
                    actor=by,
                    reason=f"v{mv.version} approved as champion",
                    alias=CHALLENGER,
                    dagster_run_id=dagster_run_id,
                )
            )
        record(delta, pipeline, *events)  # before the aliases move: no move without its history
        client.set_registered_model_alias(pipeline, CHAMPION, mv.version)
        client.set_model_version_tag(pipeline, mv.version, STATUS_TAG, "promoted")
        if moves_challenger:
            client.delete_registered_model_alias(pipeline, CHALLENGER)
    return Decision(
        "approve",
        int(mv.version),
        from_version,
        f"champion -> v{mv.version} (was {f'v{from_version}' if from_version else 'none'}), approved by {by}",
    )


def rollback(pipeline: str, delta: DeltaLakeResource, registry: MlflowRegistryResource, by: str, reason: str) -> Decision:
    """`champion` goes back to the version that was champion before it, as the audit log tells."""
    if not by.strip():
        raise ValueError("a rollback needs who asks for it (--by)")
    with promotion_lease(delta, pipeline), registry.writing() as client:
        current = alias_version(client, pipeline, CHAMPION)
        if current is None:
            raise LookupError(f"model {pipeline} has no champion to roll back")
        stack = champion_history(history(delta, pipeline))
        if not stack or stack[-1] != int(current.version):
            raise ValueError(
                f"the registry's champion of {pipeline} is v{current.version}, but the audit log's is "
                f"{f'v{stack[-1]}' if stack else 'none'}: the alias was moved outside the platform; fix it by approving a version"
            )
        if len(stack) < 2:
            raise LookupError(f"model {pipeline} has no previous champion to roll back to (v{current.version} is the first)")
        target = get_version(client, pipeline, stack[-2])
        events = [
            AuditEvent(
                "rollback",
                int(target.version),
                actor=by,
                reason=reason,
                alias=CHAMPION,
                from_version=int(current.version),
                metrics={"validation": metrics_of(target), "holdout": metrics_of(target, "holdout.")},
                mlflow_run_id=target.run_id or "",
            )
        ]
        # a rollout in progress was judged beside the champion rolled back: it ends with it, in the rollback's audit
        # commit (else it waited for signals of a champion no longer served)
        ongoing = current_rollout(history(delta, pipeline))
        if ongoing is None:
            record(delta, pipeline, *events)  # before the aliases move: no move without its history
        else:
            why = f"champion v{current.version}, which it rolled out beside, was rolled back to v{target.version}"
            end_rollout(delta, client, ongoing, by, why, along=events)
        client.set_registered_model_alias(pipeline, CHAMPION, target.version)
        client.set_model_version_tag(pipeline, current.version, STATUS_TAG, "rolled_back")
        client.set_model_version_tag(pipeline, target.version, STATUS_TAG, "promoted")
    return Decision(
        "rollback", int(target.version), int(current.version), f"champion -> v{target.version} (rolled back from v{current.version})"
    )


def abort_rollout(pipeline: str, delta: DeltaLakeResource, registry: MlflowRegistryResource, by: str, reason: str) -> Decision:
    """A person ends the rollout in progress: the champion stays, `challenger` is removed (the champion sensor's
    redeploy then gives the version no traffic), the version is tagged aborted. Before, only a rollback (which also
    moves the champion) or approving another version ended a rollout by hand."""
    if not by.strip():
        raise ValueError("an abort needs who asks for it (--by)")
    if not reason.strip():
        raise ValueError("an abort needs a reason (--reason)")
    with promotion_lease(delta, pipeline), registry.writing() as client:
        ongoing = current_rollout(history(delta, pipeline))
        if ongoing is None:
            raise LookupError(f"model {pipeline} has no rollout in progress")
        end_rollout(delta, client, ongoing, by, reason)
    return Decision(
        "rollout_abort",
        ongoing.version,
        ongoing.from_version,
        f"rollout of v{ongoing.version} aborted at {ongoing.share:.0%} of traffic; champion v{ongoing.from_version} answers alone",
    )


def end_rollout(
    delta: DeltaLakeResource,
    client,
    rollout: Rollout,
    actor: str,
    reason: str,
    dagster_run_id: str = "",
    along: Sequence[AuditEvent] = (),
) -> None:
    """Abort the rollout, the champion staying: `rollout_abort` on record first (with `along`, the decision's own
    rows, in the same commit), then `challenger` removed where it still names the version (the champion sensor's
    redeploy gives it no traffic) and the version tagged aborted. The caller holds the promotion lease. Every end
    of a rollout but its own verdicts and a newer version superseding it (which takes the alias) comes here."""
    abort = AuditEvent(
        "rollout_abort",
        rollout.version,
        actor=actor,
        reason=reason,
        alias=CHALLENGER,
        from_version=rollout.from_version,
        dagster_run_id=dagster_run_id,
    )
    record(delta, rollout.pipeline, *along, abort)  # before the alias moves: no move without its history
    drop_challenger(client, rollout.pipeline, rollout.version)
    client.set_model_version_tag(rollout.pipeline, str(rollout.version), STATUS_TAG, "aborted")


def describe(registry: MlflowRegistryResource, pipeline: str, alias: str) -> dict | None:
    """What `mlops status` shows of an alias: version, metrics, data range, lineage."""
    mv = alias_version(registry.client(), pipeline, alias)
    if mv is None:
        return None
    t = mv.tags
    return {
        "alias": alias,
        "version": int(mv.version),
        "status": t.get(STATUS_TAG, ""),
        "trained_here": PLAN_TAG in t,  # False: registered by hand, outside the platform
        "validation_metrics": metrics_of(mv),
        "holdout_metrics": metrics_of(mv, "holdout."),
        "partitions": f"{t.get('mlops.partition_start', '?')}..{t.get('mlops.partition_end', '?')}",
        "holdout_from": t.get("mlops.holdout_start", "?"),
        "features": f"{t.get('mlops.features_table', '?')}@v{t.get('mlops.features_delta_version', '?')}",
        "git_commit": t.get("mlops.git_commit", "?")[:12],
        "dagster_run_id": t.get("mlops.dagster_run_id", ""),
        "feature_columns": len(json.loads(t.get(FEATURE_COLUMNS_TAG, "[]"))),
        "erased": t.get(ERASED_TAG),  # the erasure that removed rows it trained on
    }
