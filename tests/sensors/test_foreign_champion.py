"""A `champion` alias moved by hand, in MLflow, onto a version the platform did not train: every sensor,
command and run that works against the champion says so, and none fails with a traceback."""

from pathlib import Path

from tests.support.models import flights_variant, sensor_tick

NOT_OURS = "records no training plan (mlops.training_plan): the platform did not train it"


def register_by_hand(registry, tmp_path: Path) -> int:
    """What a user does in MLflow: log a model file, register it, give it the `champion` alias."""
    import mlflow

    client = registry.client()
    model = tmp_path / "model.txt"
    model.write_text("a model trained elsewhere")
    with registry.writing() as writing, mlflow.start_run(experiment_id=registry.experiment_id(writing, "flights")) as run:
        mlflow.log_artifact(str(model), "model")  # under the home's artifact root, not the working folder's mlruns/
    client.create_registered_model("flights")
    version = client.create_model_version("flights", f"{run.info.artifact_uri}/model", run.info.run_id)
    client.set_registered_model_alias("flights", "champion", version.version)
    return int(version.version)


def test_a_champion_the_platform_did_not_train_is_named_not_raised(model_home, tmp_path, capsys):
    plat = model_home.platform(flights_variant())
    version = register_by_hand(model_home.registry, tmp_path)

    for sensor in ("flights_new_data_sensor", "flights_drift_sensor", "flights_monitor_sensor"):
        tick = sensor_tick(plat, sensor)  # before: LookupError, a failed tick every 10-30 s
        assert not tick.run_requests
        assert f"model flights version {version} (it holds `champion`) {NOT_OURS}" in tick.skip_message, sensor

    code, out, _ = model_home.mlops("status", "flights", capsys=capsys)
    assert code == 0 and f"champion: v{version}, not trained by the platform (no training plan)" in out
    code, _, err = model_home.mlops("gate", "flights", str(version), "--by", "dave", capsys=capsys)
    assert code == 2 and NOT_OURS in err and "Traceback" not in err

    result = plat.run("flights_monitor", "2013-01-29", raise_on_error=False)
    failures = [e.step_failure_data.user_failure_data for e in result.all_events if e.is_step_failure]
    assert not result.success and failures and all(f is not None and NOT_OURS in f.description for f in failures)
