"""The `<pipeline>/rollout` asset: one judgement of a progressive rollout, and the change it calls for.

The rollout sensor asks for a run when the live signals call for a change; the run
judges again on the newest signals (a person materializing the asset from the UI
gets the same judgement) and then advances the share, promotes the new version
(`champion` moves; the champion sensor rolls serving to it) or rolls back on a
breached guard: traffic back to the champion, the `challenger` alias removed, the
version tagged, and the run failed naming the guard, its value and the threshold. An alias moved by hand
in MLflow (`challenger` off the version, `champion` off the one it is compared with) aborts it.
Every change is written to the audit log before it is made, and a run with nothing due puts the
current step's share on Serve (what the sensor asks for when a run failed between the two).
"""

from collections.abc import Callable
from datetime import UTC, datetime

import dagster as dg

from mlops_assets.core.declaration import PipelineDeclaration, RolloutSpec
from mlops_assets.core.names import CHALLENGER, CHAMPION, ROLLOUT_GUARD_TAG, STATUS_TAG, rollout_key
from mlops_assets.models.promotion import end_rollout
from resources import rollouts
from resources.audit_log import AuditEvent, history, record
from resources.delta_lake import DeltaLakeResource
from resources.mlflow_registry import MlflowRegistryResource
from resources.promotion_lock import promotion_lease
from resources.registered_models import alias_version, drop_challenger, get_version, metrics_of
from resources.serving import ServingResource


def _version(client, pipeline: str, alias: str) -> int | None:
    held = alias_version(client, pipeline, alias)
    return None if held is None else int(held.version)


def _metadata(state: rollouts.Rollout, signals: rollouts.StepSignals, verdict: rollouts.Verdict) -> dict:
    return {
        "model_version": state.version,
        "champion_version": state.from_version if state.from_version is not None else "none",
        "step": f"{state.step + 1}/{len(state.steps)}",
        "share": state.share,
        "verdict": verdict.action,
        "reason": verdict.reason,
        **{k: (float(v) if v is not None else "n/a") for k, v in signals.as_metadata().items()},
    }


def share_after(state: rollouts.Rollout, verdict: rollouts.Verdict) -> float | None:
    """The canary share Serve must have once the verdict is written: the next step's, none after a rollback, the
    current step's while it bakes (put back after a run that recorded it failed before applying it); None when the
    champion sensor's redeploy sets it (a completed or aborted rollout)."""
    if verdict.action == "advance":
        return state.steps[state.step + 1]
    if verdict.action == "rollback":
        return 0.0
    return state.share if verdict.action == "wait" else None


def judge(
    decl: PipelineDeclaration,
    spec: RolloutSpec,
    delta: DeltaLakeResource,
    registry: MlflowRegistryResource,
    actor: str,
    run_id: str,
    apply_share: Callable[[float], None] | None = None,
) -> tuple[rollouts.Rollout | None, rollouts.Verdict, dict]:
    """Read the rollout and its signals, decide, and write the decision (audit row first, then the registry), then
    hand Serve's share to `apply_share`, still under the lease: a concurrent run (one materialized by hand) cannot
    put an older step's share back between another's audit row and its apply."""
    with promotion_lease(delta, decl.name), registry.writing() as client:
        state = rollouts.current(history(delta, decl.name))
        if state is None:
            return None, rollouts.Verdict("none", "no rollout in progress"), {"verdict": "none"}
        # an alias moved outside the platform (the MLflow UI) ends the rollout: Serve, following `challenger`, gives
        # its version no traffic (left open, it waited for ever and refused every manual traffic change), and a new
        # `champion` is not the baseline its guards compare with
        why = rollouts.moved_aliases(state, _version(client, decl.name, CHALLENGER), _version(client, decl.name, CHAMPION))
        if why is not None:
            end_rollout(delta, client, state, actor, why, dagster_run_id=run_id)
            return state, rollouts.Verdict("abort", why), {"model_version": state.version, "verdict": "abort", "reason": why}
        signals = rollouts.read_signals(delta, state, spec.guards, decl.target.task, decl.target.column)
        verdict = rollouts.decide(state, signals, spec)
        metadata = _metadata(state, signals, verdict)
        values = {"signals": signals.as_metadata(), "verdict": verdict.reason}
        if verdict.action == "advance":
            record(
                delta,
                decl.name,
                AuditEvent(
                    "rollout_step",
                    state.version,
                    actor=actor,
                    reason=verdict.reason,
                    alias=CHALLENGER,
                    from_version=state.from_version,
                    metrics=rollouts.step_metrics(state.step + 1, state.steps, previous=values),
                    dagster_run_id=run_id,
                ),
            )
        elif verdict.action == "complete":
            mv = get_version(client, decl.name, state.version)
            record(
                delta,
                decl.name,
                AuditEvent(
                    "rollout_complete",
                    state.version,
                    actor=actor,
                    reason=verdict.reason,
                    alias=CHALLENGER,
                    from_version=state.from_version,
                    metrics=values,
                    dagster_run_id=run_id,
                ),
                AuditEvent(
                    "promote",
                    state.version,
                    actor=actor,
                    reason=f"rollout completed: {len(state.steps)} steps passed their guards",
                    alias=CHAMPION,
                    from_version=state.from_version,
                    metrics={"validation": metrics_of(mv), "holdout": metrics_of(mv, "holdout.")},
                    dagster_run_id=run_id,
                    mlflow_run_id=mv.run_id or "",
                ),
                AuditEvent(
                    "alias_removed",
                    state.version,
                    actor=actor,
                    reason=f"v{state.version} is champion",
                    alias=CHALLENGER,
                    dagster_run_id=run_id,
                ),
            )
            client.set_registered_model_alias(decl.name, CHAMPION, str(state.version))
            drop_challenger(client, decl.name, state.version)
            client.set_model_version_tag(decl.name, str(state.version), STATUS_TAG, "promoted")
        elif verdict.action == "rollback":
            guard = verdict.guard
            assert guard is not None
            exposed = (datetime.now(UTC) - state.started_at).total_seconds()
            record(
                delta,
                decl.name,
                AuditEvent(
                    "rollout_rollback",
                    state.version,
                    actor=actor,
                    reason=verdict.reason,
                    alias=CHALLENGER,
                    from_version=state.from_version,
                    failed_gates=(guard.name,),
                    metrics={
                        **values,
                        "guard": guard.name,
                        "value": guard.value,
                        "threshold": guard.threshold,
                        "step": state.step,
                        "share": state.share,
                        "exposed_s": exposed,  # from the rollout's start to the traffic taken back: its time to restore
                    },
                    dagster_run_id=run_id,
                ),
                AuditEvent(
                    "traffic",
                    state.version,
                    actor=actor,
                    reason=f"rollout of v{state.version} rolled back",
                    alias=CHALLENGER,
                    metrics={"before": {"canary_share": state.share}, "after": {"canary_share": 0.0}},
                    dagster_run_id=run_id,
                ),
                AuditEvent(
                    "alias_removed",
                    state.version,
                    actor=actor,
                    reason=f"v{state.version} rolled back",
                    alias=CHALLENGER,
                    dagster_run_id=run_id,
                ),
            )
            drop_challenger(client, decl.name, state.version)
            client.set_model_version_tag(decl.name, str(state.version), STATUS_TAG, "rolled_back")
            client.set_model_version_tag(decl.name, str(state.version), ROLLOUT_GUARD_TAG, verdict.reason[:5000])
        share = share_after(state, verdict)
        if apply_share is not None and share is not None:
            apply_share(share)
            metadata["applied_share"] = share
    return state, verdict, metadata


def build_rollout_asset(decl: PipelineDeclaration, spec: RolloutSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=rollout_key(decl),
        group_name=decl.name,
        kinds={"ray"},
        description=f"The progressive rollout of a new {decl.name} version: steps "
        f"{', '.join(f'{s:.0%}' for s in spec.steps)}, {spec.bake_minutes:g} min and {spec.min_requests} requests each, "
        "rolled back at once when a guard is breached.",
    )
    def rollout(
        context: dg.AssetExecutionContext, delta: DeltaLakeResource, mlflow: MlflowRegistryResource, serving: ServingResource
    ) -> dg.MaterializeResult:
        run_id = context.run.run_id

        def apply_share(share: float) -> None:  # a rollback also removed the alias: the champion sensor redeploys too
            from serving import control

            control.connect(serving.ray_address)
            control.apply_rollout_share(decl.name, share)

        state, verdict, metadata = judge(decl, spec, delta, mlflow, f"dagster:{run_id}", run_id, apply_share)
        context.log.info(verdict.reason if state is None else f"{state.describe()}: {verdict.action}: {verdict.reason}")
        if verdict.action == "rollback":
            raise dg.Failure(
                description=f"rollout of {decl.name} v{state.version} rolled back: {verdict.reason}",  # type: ignore[union-attr]
                metadata=metadata,
                allow_retries=False,
            )
        return dg.MaterializeResult(metadata=metadata)

    return rollout
