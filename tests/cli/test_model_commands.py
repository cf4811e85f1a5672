"""`mlops` commands about models: status and history of a platform home."""

import shutil

from mlops_assets.cli.main import main
from mlops_assets.core.home import MlopsHome
from mlops_assets.core.names import CHAMPION, ERASED_TAG, PLAN_TAG
from resources.audit_log import AuditEvent, record
from resources.defaults import model_resources
from resources.delta_lake import DeltaLakeResource


def history_of(tmp_path, monkeypatch, capsys, *events: AuditEvent) -> str:
    """`mlops history flights` of a home whose audit log holds `events`."""
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    monkeypatch.delenv("MLOPS_DELTA_URI", raising=False)
    record(DeltaLakeResource(root=str(tmp_path / "delta")), "flights", *events)
    assert main(["history", "flights"]) == 0
    return capsys.readouterr().out


def test_history_shows_an_erasure_by_its_id_not_as_a_version(tmp_path, monkeypatch, capsys):
    """An erase row has no model version: it printed as `vNone`, and without the erasure id that `mlops reproduce`
    of a tagged version names (pointing at `mlops history`)."""
    details = {
        "erasure_id": "3efe8c8dd02d",
        "predicate": 'tailnum = "N24211"',
        "rows_deleted": {"raw": 12, "features": 12},
        "tagged_versions": [1, 2],
    }
    out = history_of(
        tmp_path,
        monkeypatch,
        capsys,
        AuditEvent(action="promote", model_version=1, actor="dagster:r1", reason="gates passed", alias="champion"),
        AuditEvent(action="erase", model_version=None, actor="dpo", reason="request 2026-118", metrics=details),
    )
    assert "vNone" not in out and "champion v- -> v1  by dagster:r1" in out
    assert "erase           by dpo: request 2026-118" in out
    assert "erasure 3efe8c8dd02d: rows deleted features 12, raw 12; trained on them: v1, v2" in out
    assert "N24211" not in out  # the predicate names the subject: only in --json


def test_status_says_the_champion_was_trained_on_erased_rows(tmp_path, monkeypatch, capsys, empty_mlflow_store):
    """Status showed an erased champion as any other, its data line naming a Delta version the vacuum removed."""
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    for variable in ("MLOPS_DELTA_URI", "MLOPS_MLFLOW_TRACKING_URI", "DAGSTER_HOME"):
        monkeypatch.delenv(variable, raising=False)
    (tmp_path / "mlflow").mkdir()
    shutil.copy(empty_mlflow_store, tmp_path / "mlflow" / "mlflow.db")
    client = model_resources(MlopsHome(tmp_path))["mlflow"].client()
    client.create_registered_model("flights")
    version = client.create_model_version("flights", source=str(tmp_path / "model"), tags={PLAN_TAG: "{}"}).version
    client.set_registered_model_alias("flights", CHAMPION, version)
    assert main(["status", "flights"]) == 0
    assert "erased" not in capsys.readouterr().out
    client.set_model_version_tag("flights", version, ERASED_TAG, "3efe8c8dd02d")
    assert main(["status", "flights"]) == 0
    out = capsys.readouterr().out
    assert "  champion: v1 (" in out
    assert "erased:     rows it trained on were erased (erasure 3efe8c8dd02d, see `mlops history flights`)" in out


def test_history_shows_a_removed_alias_as_removed(tmp_path, monkeypatch, capsys):
    """An approved challenger's `alias_removed` row printed "challenger v- -> v4", a move of the alias to v4."""
    out = history_of(
        tmp_path,
        monkeypatch,
        capsys,
        AuditEvent(action="approve", model_version=4, actor="dave", reason="t43", alias="champion", from_version=3),
        AuditEvent(action="alias_removed", model_version=4, actor="dave", reason="v4 approved as champion", alias="challenger"),
    )
    assert "approve        champion v3 -> v4  by dave: t43" in out
    assert "alias_removed  challenger v4 -> -  by dave: v4 approved as champion" in out


def test_history_shows_a_rollout_beside_its_champion(tmp_path, monkeypatch, capsys):
    """A rollout row's from_version is the champion it rolls out beside: it printed as "challenger v1 -> v5"."""
    out = history_of(
        tmp_path,
        monkeypatch,
        capsys,
        AuditEvent(action="rollout_start", model_version=5, actor="dagster:r1", reason="gates passed", alias="challenger", from_version=1),
        AuditEvent(action="rollout_abort", model_version=5, actor="dagster:r2", reason="champion moved", alias="challenger"),
    )
    assert "rollout_start  v5 beside champion v1  by dagster:r1: gates passed" in out
    assert "rollout_abort  v5  by dagster:r2: champion moved" in out and "->" not in out
