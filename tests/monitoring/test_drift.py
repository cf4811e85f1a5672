"""The fast drift decision agrees with Evidently's on the same data."""

import uuid
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mlops_assets.monitoring.drift import ReferenceProfile, detect, profile
from mlops_assets.monitoring.drift_report import evidently_drift


def synthetic(rows: int, seed: int, shift: dict[str, float]) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    cats = rng.choice(["a", "b", "c", "d"], rows, p=[0.4, 0.3, 0.2, 0.1] if "cat" not in shift else [0.1, 0.2, 0.3, 0.4])
    return pl.DataFrame(
        {
            "normal": rng.normal(shift.get("normal", 0.0), 1.0, rows),
            "skewed": rng.lognormal(shift.get("skewed", 0.0), 0.5, rows),
            "uniform": rng.uniform(0, 1, rows),
            "few": rng.choice([0, 1, 2], rows).astype(float),
            "cat": cats,
            "steady_cat": rng.choice(["x", "y"], rows),
        }
    )


NUMERICAL = ["normal", "skewed", "uniform", "few"]
CATEGORICAL = ["cat", "steady_cat"]


@pytest.mark.parametrize("rows", [600, 20_000], ids=["small-reference", "large-reference"])
def test_fast_decision_matches_evidently_on_injected_drift(tmp_path, rows):
    reference = synthetic(rows, 1, {})
    current = synthetic(rows, 2, {"normal": 0.8, "cat": 1.0, "skewed": 0.6})
    ref_profile = ReferenceProfile.from_json(profile(reference, NUMERICAL, CATEGORICAL).to_json())
    fast = detect(ref_profile, current, share_threshold=0.5)
    slow = evidently_drift(reference, current, NUMERICAL, CATEGORICAL, html_path=tmp_path / "report.html", sample_rows=None)
    joined = fast.columns.join(slow, on="column", suffix="_evidently")
    assert joined.height == 6
    assert (joined.get_column("method") == joined.get_column("method_evidently")).all()
    assert (joined.get_column("drifted") == joined.get_column("drifted_evidently")).all()
    assert sorted(fast.drifted()) == ["cat", "normal", "skewed"]
    distances = joined.filter(~pl.col("method").str.contains("p_value"))
    assert np.allclose(distances.get_column("score"), distances.get_column("score_evidently"), rtol=0.02, atol=0.002)
    assert (tmp_path / "report.html").stat().st_size > 10_000


def test_agreement_on_real_seasonal_drift():
    """January against July flights: real seasonal drift, columns near and far from the threshold."""
    from mlops_assets.defs.flights.upstream import flights_table, reference_frames

    weather = reference_frames()["weather"].with_columns(pl.col("time_hour").dt.month().alias("m"))
    flights = flights_table().with_columns(pl.col("_date").dt.month().alias("m"))
    numerical = ["dep_delay", "arr_delay", "distance", "air_time", "sched_dep_time"]
    categorical = ["carrier", "origin"]
    ref_f, cur_f = flights.filter(pl.col("m") == 1), flights.filter(pl.col("m") == 7)
    weather_cols = ["temp", "humid", "wind_speed", "visib", "pressure"]
    decisions = []
    for ref, cur, num, cat in [
        (ref_f, cur_f, numerical, categorical),
        (weather.filter(pl.col("m") == 1), weather.filter(pl.col("m") == 7), weather_cols, []),
    ]:
        fast = detect(profile(ref, num, cat), cur)
        slow = evidently_drift(ref, cur, num, cat, sample_rows=None)
        joined = fast.columns.join(slow, on="column", suffix="_evidently")
        assert joined.height == len(num) + len(cat)
        decisions.extend(joined.select(pl.col("drifted") == pl.col("drifted_evidently")).to_series().to_list())
    assert sum(decisions) / len(decisions) >= 0.95
    assert "temp" in detect(profile(weather.filter(pl.col("m") == 1), ["temp"], []), weather.filter(pl.col("m") == 7)).drifted()


def test_missing_column_is_a_clear_error():
    ref = profile(synthetic(100, 1, {}), ["normal"], [])
    with pytest.raises(KeyError, match="column 'normal' of the reference is missing"):
        detect(ref, pl.DataFrame({"other": [1.0]}))


def test_a_key_column_the_drift_check_does_not_compare_is_refused():
    """A misspelt drift.key_columns entry never asked for retraining; the monitoring runs now fail naming it."""
    from mlops_assets.core.declaration import DeclarationError
    from mlops_assets.monitoring.drift_metrics import checked_key_columns

    reference = profile(pl.DataFrame({"dep_delay": [1.0, 2.0, 3.0], "carrier_code": [1, 2, 1]}), ["dep_delay"], ["carrier_code"])
    assert checked_key_columns(["dep_delay"], reference) == ["dep_delay"]
    with pytest.raises(DeclarationError, match=r"drift\.key_columns names \['dep_dealy'\], which the drift check does not compare"):
        checked_key_columns(["dep_dealy"], reference)


@pytest.mark.parametrize("reference_rows", [5000, 300])  # the large-reference tests and the small-reference ones
@pytest.mark.parametrize("lost", [None, float("nan"), float("inf")])
def test_a_column_with_no_finite_current_value_is_drifted_not_skipped_or_a_crash(reference_rows, lost):
    """A broken upstream join empties a feature: it used to drop out of the result (no alert), crash on an empty
    quantile grid, or score NaN and count as not drifted."""
    rng = np.random.default_rng(3)
    ref = pl.DataFrame({"temp": rng.normal(10, 5, reference_rows), "flag": rng.integers(0, 2, reference_rows).astype(float)})
    reference = profile(ref, ["temp", "flag"], [])
    current = pl.DataFrame({"temp": pl.Series([lost] * 200, dtype=pl.Float64), "flag": pl.Series([lost] * 200, dtype=pl.Float64)})
    result = detect(reference, current, share_threshold=0.5)
    assert result.columns.rows() == [("temp", "all values missing", 1.0, 1.0, True), ("flag", "all values missing", 1.0, 1.0, True)]
    assert result.dataset_drift and result.drifted() == ["temp", "flag"]
    assert detect(reference, current.head(0)).columns.height == 0  # no rows at all: nothing to compare
    # a feature mostly missing in training already (wind gusts, absent on whole days) is skipped, as Evidently does
    gusts = ref.with_columns(pl.when(pl.int_range(pl.len()) % 5 == 0).then(pl.col("temp")).alias("temp"))
    assert detect(profile(gusts, ["temp", "flag"], []), current).drifted() == ["flag"]


@pytest.fixture
def report_registry(tmp_path, empty_mlflow_store, monkeypatch):
    """An MLflow store holding flights v1 on a run of its own, and the reference window HtmlReports reads (counted)."""
    import shutil
    from types import SimpleNamespace

    from mlops_assets.core.home import MlopsHome
    from mlops_assets.monitoring import assets as monitoring_assets
    from resources.mlflow_registry import MlflowRegistryResource, mlflow_resource_for

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    (tmp_path / "mlflow").mkdir()
    shutil.copy(empty_mlflow_store, tmp_path / "mlflow" / "mlflow.db")
    mlflow: MlflowRegistryResource = mlflow_resource_for(MlopsHome(tmp_path)).model_copy(update={"ui_url": "http://mlflow.test"})
    with mlflow.writing() as client:
        experiment = mlflow.experiment_id(client, "flights")
        run = client.create_run(experiment)
        client.create_registered_model("flights")
        client.create_model_version("flights", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    reads = []
    monkeypatch.setattr(monitoring_assets.drift_metrics, "reference_window", lambda delta, champ: reads.append(1) or synthetic(600, 1, {}))
    champ = SimpleNamespace(version=1, numerical=NUMERICAL, categorical=CATEGORICAL)

    def reports(decl):
        return monitoring_assets.HtmlReports(decl, None, mlflow, champ)  # type: ignore[arg-type]

    def page(report) -> str:
        """The report as a reader of drift_metrics.html_report gets it: downloaded from the MLflow run."""
        from mlflow.artifacts import download_artifacts

        dst = tmp_path / "downloaded" / uuid.uuid4().hex
        return Path(download_artifacts(report.artifact, dst_path=str(dst), tracking_uri=mlflow.resolved_tracking_uri())).read_text()

    return SimpleNamespace(mlflow=mlflow, experiment=experiment, run_id=run.info.run_id, reports=reports, reads=reads, page=page)


def test_html_report_headline_uses_the_declared_share_threshold(report_registry):
    """The report a person opens said 'Dataset drift detection threshold is 0.5' (Evidently's default) while the
    platform alerts, and retrains, at the declaration's `drift.share_threshold` (0.3 in the demo): a share of 0.4
    read 'not detected' on the page beside a drift alert."""
    from tests.support.models import flights_variant

    r = report_registry
    decl = flights_variant(drift={"share_threshold": 0.3, "report_sample_rows": 500})
    report = r.reports(decl).render(synthetic(600, 2, {"normal": 0.8}), "threshold_check")
    page = r.page(report)
    assert "Dataset drift detection threshold is 0.3" in page
    assert "threshold is 0.5" not in page


def test_html_report_link_opens_in_the_mlflow_ui(report_registry):
    """The metadata's report_url was file:///...html: a browser refuses it from the Dagster UI's page ('Not allowed
    to load local resource'), and on a cluster the file is on the run's pod. The report is logged on the version's
    MLflow run and the link is that artifact's page in the MLflow UI, which renders it."""
    from tests.support.models import flights_variant

    r = report_registry
    decl = flights_variant(drift={"share_threshold": 0.3, "report_sample_rows": 500})
    reports = r.reports(decl)
    report = reports.render(synthetic(600, 2, {}), "feature_drift_2013-01-21_v1")
    assert report.url == (
        f"http://mlflow.test/#/experiments/{r.experiment}/runs/{r.run_id}/artifacts/drift_reports/feature_drift_2013-01-21_v1.html"
    )
    reports.render(synthetic(600, 3, {}), "feature_drift_2013-01-22_v1")  # a range run: the next partition's report
    logged = [a.path for a in r.mlflow.client().list_artifacts(r.run_id, "drift_reports")]
    assert logged == ["drift_reports/feature_drift_2013-01-21_v1.html", "drift_reports/feature_drift_2013-01-22_v1.html"]
    assert len(r.reads) == 1  # the training window read once for the run, not once per report


def test_a_drift_report_is_kept_once_on_the_mlflow_run(report_registry, tmp_path):
    """Each report was written under $MLOPS_HOME/reports and logged on the run too: about 5 MB twice per monitored
    partition. The logged copy is the one kept; drift_metrics.html_report names it (runs:/...), and a reader gets
    the page from there."""
    from tests.support.models import flights_variant

    r = report_registry
    report = r.reports(flights_variant(drift={"report_sample_rows": 500})).render(synthetic(600, 2, {}), "feature_drift_2013-01-21_v1")
    assert report.artifact == f"runs:/{r.run_id}/drift_reports/feature_drift_2013-01-21_v1.html"
    assert "<html" in r.page(report)
    assert not list((tmp_path / "reports").rglob("*.html")), "no copy under $MLOPS_HOME/reports"
