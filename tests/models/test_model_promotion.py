"""Training, gates, promotion, approval and rollback through real Dagster runs.

Real MLflow SQLite store, real Delta tables (copied flights features), real
`mlops` commands; the registry aliases and the audit log are what is checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm as lgb
import mlflow
import pytest

from mlops_assets.core.names import CHAMPION
from resources.audit_log import history
from resources.registered_models import alias_version, load_booster
from tests.support.models import (
    WORSE,
    actions,
    aliases,
    flights_variant,
)

LINEAGE_TAGS = [
    "mlops.pipeline",
    "mlops.task",
    "mlops.feature_columns",
    "mlops.categorical_features",
    "mlops.declaration_hash",
    "mlops.feature_code_hash",
    "mlops.features_table",
    "mlops.features_delta_version",
    "mlops.partition_start",
    "mlops.partition_end",
    "mlops.git_commit",
    "mlops.dagster_run_id",
    "metric.mae",
    "metric.rmse",
]


def test_first_model_is_promoted_on_floors_with_lineage(model_home):
    decl = flights_variant()
    plat = model_home.platform(decl)
    result = plat.run("flights_train")
    assert result.success
    assert aliases(model_home) == (1, None)

    champion = alias_version(model_home.registry.client(), "flights", CHAMPION)
    tags = champion.tags
    for key in LINEAGE_TAGS:
        assert tags.get(key), key
    assert (tags["mlops.partition_start"], tags["mlops.partition_end"]) == ("2013-01-15", "2013-02-04")
    assert tags["mlops.features_delta_version"] == str(plat.delta.version("flights", "features"))
    assert tags["mlops.dagster_run_id"] == result.run_id
    assert tags["mlops.declaration_hash"] == decl.fingerprint()
    assert tags["mlops.task"] == "regression" and "mlops.classes" not in tags

    # the registered artifact is LightGBM's text format, its columns are the tag's
    booster = load_booster(model_home.registry, "flights", 1)
    assert booster.feature_name() == json.loads(tags["mlops.feature_columns"])
    assert "dep_delay" in booster.feature_name() and "arr_delay" not in booster.feature_name()
    assert json.loads(tags["mlops.categorical_features"]) == ["carrier_code", "origin_code", "dest_code"]

    # the materialization is a pointer, and the gates are checks with the comparison in metadata
    materialization = result.asset_materializations_for_node("flights__model")[0]
    assert materialization.metadata["model_uri"].value == "models:/flights/1"
    assert materialization.metadata["rows_without_target"].value > 0  # cancelled flights, excluded with a reason
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert {n: c.passed for n, c in checks.items()} == {"quality_floors": True, "no_regression": True, "data_checks": True}
    assert "no champion yet" in checks["no_regression"].description
    assert checks["quality_floors"].metadata["floors"].value == {"mae": 30.0}

    # the MLflow run: params, the Delta input, the importance plot, the model files
    client = model_home.registry.client()
    run = client.get_run(champion.run_id)
    assert run.data.params["features_delta_version"] == tags["mlops.features_delta_version"]
    assert float(run.data.params["lgb.deterministic"] == "True") and run.data.params["lgb.seed"] == "42"
    assert run.data.metrics["rows_without_target"] > 0
    dataset_inputs = run.inputs.dataset_inputs
    assert len(dataset_inputs) == 1
    source = json.loads(dataset_inputs[0].dataset.source)
    assert source["path"] == tags["mlops.features_table"] and source["delta_table_version"] == int(tags["mlops.features_delta_version"])
    artifacts = {a.path for a in client.list_artifacts(champion.run_id)}
    assert {"feature_importance.png", "training_plan.json"} <= artifacts
    assert str(model_home.root / "mlflow" / "artifacts") in client.get_experiment_by_name("flights").artifact_location
    with model_home.registry.writing():
        local = Path(mlflow.artifacts.download_artifacts("models:/flights/1"))
    assert (local / "model.lgb").is_file() and not list(local.rglob("*.pkl"))
    assert lgb.Booster(model_file=str(local / "model.lgb")).num_trees() >= 1

    events = history(plat.delta, "flights")
    assert actions(plat) == [("promote", 1)]
    row = events.row(0, named=True)
    assert row["from_version"] is None and row["alias"] == CHAMPION and row["actor"] == f"dagster:{result.run_id}"
    assert json.loads(row["metrics"])["holdout"]["mae"] > 0


def test_worse_challenger_is_rejected_and_the_failed_gate_is_logged(model_home):
    model_home.platform(flights_variant()).run("flights_train")
    worse = model_home.platform(flights_variant(training=WORSE))
    result = worse.run("flights_train", raise_on_error=False)
    assert not result.success  # blocking gate failed: promotion did not run
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not checks["no_regression"].passed and checks["quality_floors"].passed
    comparison = checks["no_regression"].metadata["comparison"].value["mae"]
    assert comparison["challenger"] > comparison["limit"] > comparison["champion"]
    assert not result.asset_materializations_for_node("flights__promotion")
    assert aliases(model_home) == (1, None)

    rejected = model_home.registry.client().get_model_version("flights", "2")
    assert rejected.tags["mlops.status"] == "rejected" and rejected.tags["gate.no_regression"] == "failed"
    events = history(worse.delta, "flights")
    assert actions(worse) == [("promote", 1), ("reject", 2)]
    row = events.row(1, named=True)
    assert row["failed_gates"] == "no_regression" and row["from_version"] == 1
    assert "no_regression" in row["reason"] and json.loads(row["metrics"])["champion_holdout"]["mae"] == comparison["champion"]


def test_a_floor_failure_rejects_even_the_first_model(model_home):
    plat = model_home.platform(flights_variant(gates={"floors": {"mae": 1.0, "r2": 0.1}}))
    result = plat.run("flights_train", raise_on_error=False)
    assert not result.success
    assert aliases(model_home) == (None, None)
    row = history(plat.delta, "flights").row(0, named=True)
    assert (row["action"], row["failed_gates"]) == ("reject", "quality_floors")
    assert "mae" in row["reason"] and "must be <= 1.0" in row["reason"]


def test_manual_policy_waits_for_approval_in_dagster_and_on_the_command_line(model_home, capsys):
    decl = flights_variant(policy="manual")
    model_home.declare(decl)
    plat = model_home.platform(decl)
    assert plat.run("flights_train").success
    assert aliases(model_home) == (None, 1)  # waiting: nothing serves it yet
    assert actions(plat) == [("await_approval", 1)]

    approval = plat.defs.resolve_job_def("flights_approve").execute_in_process(
        instance=model_home.instance,
        run_config={"ops": {"flights__approve": {"config": {"version": 1, "approver": "carol", "reason": "looks good"}}}},
    )
    assert approval.success
    assert aliases(model_home) == (1, None)
    approved = history(plat.delta, "flights").filter(history(plat.delta, "flights")["action"] == "approve").row(0, named=True)
    assert (approved["actor"], approved["reason"], approved["model_version"]) == ("carol", "looks good", 1)

    # a second model is retrained on a later window, waits, and is approved with `mlops approve`
    assert model_home.platform(flights_variant(policy="manual", training={"window_days": 22})).run("flights_train").success
    assert aliases(model_home) == (1, 2)
    code, out, err = model_home.mlops("approve", "flights", "2", "--by", "dave", "--reason", "ticket 42", capsys=capsys)
    assert code == 0, err
    assert "champion -> v2 (was v1)" in out
    assert aliases(model_home) == (2, None)
    assert actions(plat) == [
        ("await_approval", 1),
        ("approve", 1),
        ("alias_removed", 1),
        ("await_approval", 2),
        ("approve", 2),
        ("alias_removed", 2),
    ]

    code, out, _ = model_home.mlops("status", "flights", capsys=capsys)
    assert code == 0
    assert "champion: v2" in out and "challenger: none" in out and "mae=" in out and "2013-01-14..2013-02-04" in out
    assert "last training: succeeded (started " in out
    code, out, _ = model_home.mlops("history", "flights", capsys=capsys)
    assert code == 0 and "approve" in out and "by dave" in out and "ticket 42" in out


def test_rollback_moves_champion_back_and_is_logged(model_home, capsys):
    decl = flights_variant()
    model_home.declare(decl)
    plat = model_home.platform(decl)
    assert plat.run("flights_train").success
    # the same settings on a one-day-longer window, started by a drift sensor: no regression, promoted
    later = model_home.platform(flights_variant(training={"window_days": 22}))
    tags = {"mlops/trigger": "drift", "mlops/reason": "drift share 0.42 > 0.30"}
    assert later.defs.resolve_job_def("flights_train").execute_in_process(instance=model_home.instance, tags=tags).success
    assert aliases(model_home) == (2, None)
    promoted = history(plat.delta, "flights").tail(1).row(0, named=True)
    assert (promoted["action"], promoted["from_version"]) == ("promote", 1)
    assert promoted["reason"] == "gates passed; policy auto (run started drift: drift share 0.42 > 0.30)"

    code, out, err = model_home.mlops("rollback", "flights", "--by", "erin", "--reason", "latency spike", capsys=capsys)
    assert code == 0, err
    assert "champion -> v1 (rolled back from v2)" in out
    assert aliases(model_home) == (1, None)
    row = history(plat.delta, "flights").tail(1).row(0, named=True)
    assert (row["action"], row["model_version"], row["from_version"], row["actor"], row["reason"]) == (
        "rollback",
        1,
        2,
        "erin",
        "latency spike",
    )
    assert model_home.registry.client().get_model_version("flights", "2").tags["mlops.status"] == "rolled_back"

    # nothing before v1: a clear error, and nothing changes
    before = history(plat.delta, "flights").height
    code, _, err = model_home.mlops("rollback", "flights", "--by", "erin", capsys=capsys)
    assert code == 2 and "no previous champion" in err
    assert aliases(model_home) == (1, None) and history(plat.delta, "flights").height == before


def test_gates_rerun_alone_on_the_champion_decide_nothing(model_home, capsys):
    import dagster as dg

    from mlops_assets.core.names import model_key

    decl = flights_variant()
    plat = model_home.platform(decl)
    assert plat.run("flights_train").success
    result = dg.materialize(
        [*plat.defs.assets, *plat.defs.asset_checks],
        selection=dg.AssetSelection.checks_for_assets(model_key(decl)),
        instance=model_home.instance,
        resources=plat.resources(),
    )
    assert {e.check_name: e.passed for e in result.get_asset_check_evaluations()} == {
        "quality_floors": True,
        "no_regression": True,
        "data_checks": True,
    }
    (compared,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "no_regression"]
    assert compared.description == "it is the champion: nothing to compare it with, floors alone decide"  # was "no champion yet"
    assert not result.asset_materializations_for_node("flights__model")  # the pointer was read, nothing retrained
    assert model_home.registry.client().get_model_version("flights", "1").tags["mlops.status"] == "promoted"
    assert aliases(model_home) == (1, None) and actions(plat) == [("promote", 1)]
    model_home.declare(decl)
    code, out, _ = model_home.mlops("gate", "flights", "1", "--by", "dave", capsys=capsys)
    assert code == 0 and "flights: v1 passed its gates against nothing: it is the champion" in out, out
    assert aliases(model_home) == (1, None)


def test_no_alias_moves_without_its_audit_row(model_home, monkeypatch):
    """The audit row is written before the alias moves: a registry failure between them leaves the
    move on record (and the champion where it was), never a move with no history."""
    from mlflow import MlflowClient

    def registry_down(self, *args, **kwargs):
        raise OSError("registry unreachable")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", registry_down)
    result = model_home.platform(flights_variant()).run("flights_train", raise_on_error=False)
    assert not result.success
    assert aliases(model_home) == (None, None)
    events = history(model_home.platform(flights_variant()).delta, "flights")
    assert [(r["action"], r["model_version"]) for r in events.iter_rows(named=True)] == [("promote", 1)]


def test_an_approval_of_gates_compared_with_another_champion_is_refused(model_home, capsys):
    """v2 and v3 both passed their gates against v1. Once v3 is approved, approving v2 would replace v3 with
    a version never compared with it: refused as policy auto refuses it, and nothing changes, until `mlops gate`
    compares v2 with v3."""
    model_home.declare(flights_variant(policy="manual"))
    for window in (21, 22, 23):
        assert model_home.platform(flights_variant(policy="manual", training={"window_days": window})).run("flights_train").success
        if window == 21:
            assert model_home.mlops("approve", "flights", "1", "--by", "carol", "--reason", "first", capsys=capsys)[0] == 0
    assert aliases(model_home) == (1, 3)
    assert model_home.mlops("approve", "flights", "3", "--by", "dave", "--reason", "better", capsys=capsys)[0] == 0
    plat = model_home.platform(flights_variant(policy="manual"))
    before = history(plat.delta, "flights").height
    code, _, err = model_home.mlops("approve", "flights", "2", "--by", "dave", "--reason", "also good", capsys=capsys)
    assert code != 0 and "Traceback" not in err
    assert "gates compared v2 with champion v1, but the champion is now v3; re-run the gates" in err
    assert "`mlops gate flights 2`" in err
    assert aliases(model_home) == (3, None) and history(plat.delta, "flights").height == before
    # the gates again, against v3 now: what the refusal says to do, and then v2 can be decided on
    code, out, _ = model_home.mlops("gate", "flights", "2", "--by", "dave", capsys=capsys)
    assert code == 0 and "flights: v2 passed its gates against champion v3" in out and "no_regression" in out, out
    assert model_home.registry.client().get_model_version("flights", "2").tags["mlops.gates_champion"] == "3"
    code, out, _ = model_home.mlops("approve", "flights", "2", "--by", "dave", "--reason", "also good", capsys=capsys)
    assert code == 0 and "champion -> v2 (was v3)" in out
    assert aliases(model_home) == (2, None)


def test_a_version_waiting_for_approval_leaves_the_challenger_alias_to_a_rollout_in_progress(model_home, capsys):
    """The rollout's canary share goes to whatever `challenger` names: a newer version that passed its gates
    meanwhile waits for approval without the alias, and approving it supersedes the rollout."""
    rollout = {"steps": [0.1, 1.0], "bake_minutes": 1.0, "min_requests": 10}
    manual = {"policy": "manual", "rollout": rollout}
    model_home.declare(flights_variant(promotion=manual))
    for window in (21, 22, 23):
        plat = model_home.platform(flights_variant(training={"window_days": window}, promotion=manual))
        assert plat.run("flights_train").success
        if window < 23:  # v1 becomes champion at once (nothing to roll out beside); v2 starts rolling out
            assert model_home.mlops("approve", "flights", str(window - 20), "--by", "carol", "--reason", "ok", capsys=capsys)[0] == 0
    assert aliases(model_home) == (1, 2)
    waiting = history(plat.delta, "flights").tail(1).row(0, named=True)
    assert (waiting["action"], waiting["model_version"], waiting["alias"]) == ("await_approval", 3, None)
    assert "stays with v2, rolling out" in waiting["reason"]
    assert model_home.registry.client().get_model_version("flights", "3").tags["mlops.status"] == "awaiting_approval"

    assert model_home.mlops("approve", "flights", "3", "--by", "dave", "--reason", "newer", capsys=capsys)[0] == 0
    assert aliases(model_home) == (1, 3)
    assert actions(plat)[-2:] == [("rollout_abort", 2), ("rollout_start", 3)]


def test_a_re_execution_gates_and_promotes_the_model_its_parent_run_trained(model_home):
    """A re-execution from failure skips the model step: its gates and promotion read the pointer the run it
    re-executes recorded (up the chain), not whichever training materialized a model last."""
    from mlops_assets.core.names import model_key
    from mlops_assets.models.registration import run_pointer

    decl = flights_variant()
    plat = model_home.platform(decl)
    first = plat.run("flights_train")
    assert model_home.platform(flights_variant(training={"window_days": 22})).run("flights_train").success  # v2, later
    job = plat.defs.resolve_job_def("flights_train")
    again = plat.instance.create_run_for_job(job_def=job, parent_run_id=first.run_id, root_run_id=first.run_id)
    twice = plat.instance.create_run_for_job(job_def=job, parent_run_id=again.run_id, root_run_id=first.run_id)
    alone = plat.instance.create_run_for_job(job_def=job)
    key = model_key(decl)
    assert run_pointer(plat.instance, key, first.run_id).version == "1"
    assert run_pointer(plat.instance, key, again.run_id).version == "1"
    assert run_pointer(plat.instance, key, twice.run_id).version == "1"
    assert run_pointer(plat.instance, key, alone.run_id).version == "2"  # started alone: the latest model


def _rolling_out(model_home, champions: tuple[int, ...], window: int):
    """Champions trained on these windows (each promoted at once), then a version of `window` rolling out beside the
    last: its platform."""
    for days in champions:
        assert model_home.platform(flights_variant(training={"window_days": days})).run("flights_train").success
    rollout = {"policy": "auto", "rollout": {"steps": [0.1, 1.0], "bake_minutes": 1.0, "min_requests": 10}}
    plat = model_home.platform(flights_variant(training={"window_days": window}, promotion=rollout))
    assert plat.run("flights_train").success
    return plat


def test_a_rollback_ends_the_rollout_beside_the_champion_it_rolls_back(model_home, capsys):
    """The rollout of v3 was judged beside champion v2: rolled back to v1, it waited for signals of a champion no
    longer served. It is aborted with the rollback, in the same audit commit, and `challenger` is removed."""
    plat = _rolling_out(model_home, champions=(21, 22), window=23)  # v1, v2 promoted at once, v3 rolling out
    assert aliases(model_home) == (2, 3) and actions(plat)[-1] == ("rollout_start", 3)
    code, out, err = model_home.mlops("rollback", "flights", "--by", "erin", "--reason", "v2 misbehaves", capsys=capsys)
    assert code == 0, err
    assert aliases(model_home) == (1, None)
    assert actions(plat)[-2:] == [("rollback", 1), ("rollout_abort", 3)]
    abort = history(plat.delta, "flights").tail(1).row(0, named=True)
    assert abort["reason"] == "champion v2, which it rolled out beside, was rolled back to v1"
    assert model_home.registry.client().get_model_version("flights", "3").tags["mlops.status"] == "aborted"


def test_a_waiting_challengers_gates_run_again_against_the_new_champion_let_it_be_approved(model_home, capsys):
    """v2 and v3 passed against v1; v2 was approved. v3's gates are stale, and re-running them used to record
    nothing for a version holding an alias, so it could never be approved."""
    import dagster as dg

    from mlops_assets.core.names import model_key

    model_home.declare(flights_variant(policy="manual"))
    for window in (21, 22, 23):
        plat = model_home.platform(flights_variant(policy="manual", training={"window_days": window}))
        assert plat.run("flights_train").success
        if window == 21:
            assert model_home.mlops("approve", "flights", "1", "--by", "carol", "--reason", "first", capsys=capsys)[0] == 0
    assert model_home.mlops("approve", "flights", "2", "--by", "dave", "--reason", "ok", capsys=capsys)[0] == 0
    assert aliases(model_home) == (2, 3)
    code, _, err = model_home.mlops("approve", "flights", "3", "--by", "dave", "--reason", "newer", capsys=capsys)
    assert code != 0 and "gates compared v3 with champion v1, but the champion is now v2" in err
    gates = dg.materialize(
        [*plat.defs.assets, *plat.defs.asset_checks],
        selection=dg.AssetSelection.checks_for_assets(model_key(plat.declarations["flights"])),
        instance=model_home.instance,
        resources=plat.resources(),
    )
    assert all(e.passed for e in gates.get_asset_check_evaluations())
    assert model_home.registry.client().get_model_version("flights", "3").tags["mlops.gates_champion"] == "2"
    code, out, err = model_home.mlops("approve", "flights", "3", "--by", "dave", "--reason", "re-gated", capsys=capsys)
    assert code == 0, err
    assert aliases(model_home) == (3, None)


def test_a_version_rejected_at_training_and_passed_by_gates_run_again_waits_for_approval(model_home, capsys):
    """The team relaxed a gate and ran v2's gates again: they passed, but approval reads the audit log, where v2 had
    only its rejection, so `mlops approve` refused it however often the gates ran. Now the passing run is on record."""
    model_home.declare(flights_variant(policy="manual"))
    assert model_home.platform(flights_variant(policy="manual")).run("flights_train").success
    assert model_home.mlops("approve", "flights", "1", "--by", "carol", "--reason", "first", capsys=capsys)[0] == 0
    assert not model_home.platform(flights_variant(policy="manual", training=WORSE)).run("flights_train", raise_on_error=False).success
    assert model_home.registry.client().get_model_version("flights", "2").tags["mlops.status"] == "rejected"
    model_home.declare(flights_variant(policy="manual", training=WORSE, gates={"max_regression": 100.0}))
    code, out, _ = model_home.mlops("gate", "flights", "2", "--by", "dave", capsys=capsys)
    assert code == 0 and "v2 waits for approval" in out and "`mlops approve flights 2`" in out, out
    plat = model_home.platform(flights_variant(policy="manual"))
    waiting = history(plat.delta, "flights").tail(1).row(0, named=True)
    assert (waiting["action"], waiting["model_version"], waiting["actor"]) == ("await_approval", 2, "cli:dave")
    code, out, err = model_home.mlops("approve", "flights", "2", "--by", "dave", "--reason", "relaxed gate", capsys=capsys)
    assert code == 0 and "champion -> v2" in out, err
    assert aliases(model_home) == (2, None)


def test_policy_auto_refuses_gates_compared_with_another_champion_or_with_none_recorded(model_home):
    """Two racing promotions: a version gated before the winner became champion was never compared with it, so
    policy auto refuses it (a `reject` for `stale_comparison`, status `stale`) and the champion stays; a verdict
    that recorded no comparison at all counts as stale too."""
    from mlops_assets.core.names import GATES_CHAMPION_TAG, GATES_TAG, STATUS_TAG
    from mlops_assets.models.promotion import StaleGates, promote_after_gates

    decl = flights_variant()
    plat = model_home.platform(decl)
    assert plat.run("flights_train").success  # v1, champion
    registry = model_home.registry
    with registry.writing() as client:
        v1 = client.get_model_version("flights", "1")
        # v2 and v3: the same model registered again, with passed gates that compared them with no champion (v2)
        # and with nothing on record (v3), as if gated while v1 was being promoted
        for gates_champion in ("none", None):
            mv = client.create_model_version("flights", v1.source, v1.run_id)
            client.set_model_version_tag("flights", mv.version, GATES_TAG, "passed")
            if gates_champion is not None:
                client.set_model_version_tag("flights", mv.version, GATES_CHAMPION_TAG, gates_champion)

    for version, was in (("2", "champion none"), ("3", "no recorded champion")):
        before = history(plat.delta, "flights").height
        with pytest.raises(StaleGates, match=f"gates compared v{version} with {was}, but the champion is now v1"):
            promote_after_gates(decl, plat.delta, registry, version, actor="t")
        assert aliases(model_home) == (1, None)
        events = history(plat.delta, "flights")
        assert events.height == before + 1
        row = events.tail(1).row(0, named=True)
        assert (row["action"], row["model_version"], row["from_version"], row["failed_gates"]) == (
            "reject",
            int(version),
            1,
            "stale_comparison",
        )
        assert registry.client().get_model_version("flights", version).tags[STATUS_TAG] == "stale"


def test_a_person_aborts_a_rollout_and_the_champion_stays(model_home, capsys):
    """Only a rollback (which also moves the champion) or approving another version ended a rollout by hand."""
    plat = _rolling_out(model_home, champions=(21,), window=22)  # v1 champion, v2 rolling out
    assert aliases(model_home) == (1, 2) and actions(plat)[-1] == ("rollout_start", 2)
    code, out, err = model_home.mlops("abort", "flights", "--by", "erin", "--reason", "latency in region b", capsys=capsys)
    assert code == 0, err
    assert "rollout of v2 aborted at 10% of traffic; champion v1 answers alone" in out
    assert aliases(model_home) == (1, None) and actions(plat)[-1] == ("rollout_abort", 2)
    abort = history(plat.delta, "flights").tail(1).row(0, named=True)
    assert (abort["actor"], abort["reason"]) == ("erin", "latency in region b")
    assert model_home.registry.client().get_model_version("flights", "2").tags["mlops.status"] == "aborted"
    code, _, err = model_home.mlops("abort", "flights", "--reason", "again", capsys=capsys)
    assert code == 2 and "model flights has no rollout in progress" in err
