"""`mlops` commands about models, on a platform home's audit log."""

from mlops_assets.cli.main import main
from resources.audit_log import AuditEvent, record
from resources.delta_lake import DeltaLakeResource


def test_history_shows_an_erasure_by_its_id_not_as_a_version(tmp_path, monkeypatch, capsys):
    """An erase row has no model version: it printed as `vNone`, and without the erasure id that `mlops reproduce`
    of a tagged version names (pointing at `mlops history`)."""
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    monkeypatch.delenv("MLOPS_DELTA_URI", raising=False)
    delta = DeltaLakeResource(root=str(tmp_path / "delta"))
    details = {
        "erasure_id": "3efe8c8dd02d",
        "predicate": 'tailnum = "N24211"',
        "rows_deleted": {"raw": 12, "features": 12},
        "tagged_versions": [1, 2],
    }
    record(
        delta,
        "flights",
        AuditEvent(action="promote", model_version=1, actor="dagster:r1", reason="gates passed", alias="champion"),
        AuditEvent(action="erase", model_version=None, actor="dpo", reason="request 2026-118", metrics=details),
    )
    assert main(["history", "flights"]) == 0
    out = capsys.readouterr().out
    assert "vNone" not in out and "champion v- -> v1  by dagster:r1" in out
    assert "erase           by dpo: request 2026-118" in out
    assert "erasure 3efe8c8dd02d: rows deleted features 12, raw 12; trained on them: v1, v2" in out
    assert "N24211" not in out  # the predicate names the subject: only in --json
