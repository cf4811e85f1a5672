"""The model card of a version names its exact data, gates, fairness and history, and follows its story."""

from __future__ import annotations

from mlops_assets.core.names import model_versions_partitions
from mlops_assets.governance.model_card import build_card
from resources.registered_models import plan_of
from tests.support.models import flights_variant, sensor_tick

FAIR = {"fairness": {"groups": ["origin"], "metric": "mae", "max_gap": 0.9}}


def test_the_champions_card_names_its_delta_versions_gates_and_history_and_is_rewritten_when_that_changes(model_home):
    decl = flights_variant(gates=FAIR)
    plat = model_home.platform(decl)
    assert plat.run("flights_train").success
    plan = plan_of(model_home.registry.client().get_model_version("flights", "1"))

    tick = sensor_tick(plat, "flights_model_card_sensor")
    assert [r.partition_key for r in tick.run_requests] == ["1"]
    assert tick.dynamic_partitions_requests[0].partition_keys == ["1"]
    plat.instance.add_dynamic_partitions(model_versions_partitions(decl), ["1"])
    result = plat.defs.resolve_job_def("flights_model_card").execute_in_process(instance=plat.instance, partition_key="1")
    assert result.success
    meta = result.asset_materializations_for_node("flights__model_card")[0].metadata
    card = meta["card"].value
    assert f"features at Delta version {plan.features_version}" in card
    assert f"{plan.partition_start} .. {plan.partition_end}" in card
    for gate in ("quality_floors", "no_regression", "data_checks", "fairness"):
        assert f"| {gate} | yes |" in card
    assert "| origin | EWR |" in card and "| promote | 1 |" in card
    assert "Arrival delay" in card  # intended use, from the declaration's description
    html = open(meta["html"].value).read()
    assert html.startswith("<!doctype html>") and "<table>" in html
    run_id = model_home.registry.client().get_model_version("flights", "1").run_id
    logged = {a.path for a in model_home.registry.client().list_artifacts(run_id, "model_card")}
    assert logged == {"model_card/v1.md", "model_card/v1.html"}
    # the MLflow run is a link to its page in the MLflow UI (it was a bare id), at the UI's configured address
    experiment_id = model_home.registry.client().get_run(run_id).info.experiment_id
    assert meta["mlflow_run"].value == f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}"
    elsewhere = model_home.registry.model_copy(update={"ui_url": "https://mlflow.example.com/"})
    linked = build_card(decl, plat.delta, elsewhere, 1)
    url = f"https://mlflow.example.com/#/experiments/{experiment_id}/runs/{run_id}"
    assert f"| mlflow run | [{run_id}]({url}) |" in linked.markdown
    assert f'<a href="{url}">{run_id}</a>' in linked.html()
    unknown = build_card(decl, plat.delta, model_home.registry.model_copy(update={"ui_url": ""}), 1)
    assert f"| mlflow run | {run_id} |" in unknown.markdown  # no address: the id, not a link to nowhere

    assert not sensor_tick(plat, "flights_model_card_sensor", cursor=tick.cursor).run_requests  # nothing changed
    # a card run that failed is asked for again while the story stays the same
    (first,) = tick.run_requests
    plat.failed(first, "flights_model_card")
    retry = sensor_tick(plat, "flights_model_card_sensor", cursor=tick.cursor)
    assert [(r.partition_key, r.run_key) for r in retry.run_requests] == [("1", f"{first.run_key}~retry-1")]
    later = model_home.platform(flights_variant(gates=FAIR, training={"window_days": 22}))
    assert later.run("flights_train").success  # v2 replaces v1: both stories change
    again = sensor_tick(later, "flights_model_card_sensor", cursor=tick.cursor)
    assert sorted(r.partition_key for r in again.run_requests) == ["1", "2"]
    # registry tags are anyone's to edit: the card shows them as text, never as markup
    model_home.registry.client().set_model_version_tag("flights", "1", "mlops.status", "<img src=x onerror=alert(1)>")
    result = later.defs.resolve_job_def("flights_model_card").execute_in_process(instance=later.instance, partition_key="1")
    html = open(result.asset_materializations_for_node("flights__model_card")[0].metadata["html"].value).read()
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
