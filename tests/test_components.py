"""Pipelines are `MlPipeline` Dagster components: the code location loads them through Dagster's own
defs loader, and `dg` scaffolds, checks and lists them, in this project or a team's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import dagster as dg
import pytest

from mlops_assets.core.declaration import PACKAGED_PIPELINES, DeclarationError, load_declarations
from mlops_assets.definitions import location
from tests.support.platform import TESTS

DG = Path(sys.executable).with_name("dg")


def test_the_code_location_is_the_packaged_components(monkeypatch):
    monkeypatch.delenv("MLOPS_PIPELINES", raising=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        defs = location()
    # Dagster's loader warned twice per component that its own code references are beta: dozens of lines at a
    # demo's start, from every code server and run process
    assert not [w for w in seen if issubclass(w.category, dg.BetaWarning | dg.PreviewWarning)]
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"flights/raw", "flights/features", "flights/model", "flights/promotion", "flights/deployment", "flights/feature_drift"} <= keys
    assert {"landing", "delta", "mlflow", "serving"} <= set(defs.resources or {})
    sensors = {s.name: s.default_status for s in defs.sensors or []}
    assert sensors["flights_landing_sensor"] == dg.DefaultSensorStatus.RUNNING
    assert sensors["flights_champion_sensor"] == dg.DefaultSensorStatus.RUNNING


def test_mlops_pipelines_points_the_location_at_other_declarations(monkeypatch):
    monkeypatch.setenv("MLOPS_PIPELINES", str(TESTS / "pipelines" / "telemetry.yaml"))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        defs = location()
    # the same beta notes (the assets' backfill_policy) as the packaged components': three per load, in every process
    assert not [w for w in seen if issubclass(w.category, dg.BetaWarning | dg.PreviewWarning)]
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert "telemetry/model" in keys and not any(k.startswith("flights/") for k in keys)


def test_component_files_hold_declarations_beside_other_components(tmp_path):
    flights = (PACKAGED_PIPELINES / "flights" / "defs.yaml").read_text()
    other = "type: dagster.PythonScriptComponent\nattributes: {execution: {path: run.py}}\n"
    (tmp_path / "defs.yaml").write_text(other + "---\n" + flights)
    assert [d.name for d in load_declarations(str(tmp_path))] == ["flights"]
    (tmp_path / "defs.yaml").write_text("type: mlops_assets.components.MlPipeline\nattributes:\n")
    with pytest.raises(DeclarationError, match="expected a mapping"):
        load_declarations(str(tmp_path))


def _dg(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, VIRTUAL_ENV=sys.prefix, PYTHONPATH=str(project), NO_COLOR="1")
    env.pop("MLOPS_PIPELINES", None)
    return subprocess.run([str(DG), *args], cwd=project, env=env, capture_output=True, text=True, timeout=180)


def test_a_team_scaffolds_checks_and_lists_a_pipeline_in_its_own_dagster_project(tmp_path):
    """A Dagster project that depends on this package declares its pipeline with `dg scaffold defs`;
    the starter declaration loads as written, and a bad field is named with its file and line."""
    project = tmp_path / "team"
    (project / "team_project" / "defs").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        '[project]\nname = "team-project"\nversion = "0.1.0"\n\n'
        '[tool.dg]\ndirectory_type = "project"\n\n[tool.dg.project]\nroot_module = "team_project"\n'
    )
    (project / "team_project" / "__init__.py").write_text("")
    (project / "team_project" / "defs" / "__init__.py").write_text("")
    (project / "team_project" / "definitions.py").write_text(
        "from pathlib import Path\n\nimport dagster as dg\n\n\n@dg.definitions\ndef defs():\n"
        "    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)\n"
    )
    scaffold = _dg(project, "scaffold", "defs", "mlops_assets.components.MlPipeline", "sensor_readings")
    assert scaffold.returncode == 0, scaffold.stderr
    folder = project / "team_project" / "defs" / "sensor_readings"
    assert (folder / "features.py").exists()
    assert "module: team_project.defs.sensor_readings.features" in (folder / "defs.yaml").read_text()

    listed = _dg(project, "list", "defs", "--json")
    assert listed.returncode == 0, listed.stderr
    assets = {a["asset_key"]: a for a in json.loads(listed.stdout)["assets"]}
    assert {"sensor_readings/raw", "sensor_readings/model", "sensor_readings/deployment"} <= set(assets)
    assert assets["sensor_readings/model"]["source"].startswith("team_project/defs/sensor_readings/defs.yaml")
    assert _dg(project, "check", "defs").returncode == 0

    (folder / "defs.yaml").write_text((folder / "defs.yaml").read_text().replace("format: csv", "format: xlsx"))
    checked = _dg(project, "check", "defs")
    out = checked.stdout + checked.stderr
    assert checked.returncode != 0
    assert "sensor_readings/defs.yaml:" in out and "attributes.landing.format" in out and "xlsx" in out
