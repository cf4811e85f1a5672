"""`mlops bench reliability`'s cases with small settings: real SIGKILLs of real steps, a real Serve under load.

The data and model cases run on a private home (the shared flights Delta tables copied, a champion trained
by the platform's jobs); the serving cases on the session's Serve and flights application, which they leave
as they found them (champion alias back, replicas replaced, the prediction log's table back in place).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import requests

from mlops_assets.cli.bench import reliability_bench as rb
from resources.audit_log import history
from tests.support.ray_instance import PREDICT_TOKEN
from tests.support.serving import request_records, serving_settings

pytestmark = pytest.mark.reliability  # after the suite, in .ci/run: `pytest -m reliability`


@pytest.fixture(scope="module")
def fault_home(flights_ingested, tmp_path_factory) -> rb.FaultHome:
    return rb.prepare_home(tmp_path_factory.mktemp("fault_home"), delta_from=Path(flights_ingested.delta.root) / "flights")


def test_an_ingestion_killed_at_any_point_leaves_no_partial_partition_and_reruns_cleanly(fault_home):
    case = rb.ingestion_killed(fault_home, points=("between_raw_and_quarantine", "before_features_commit", "random"))
    assert case.passed, case.detail
    assert case.rows_lost == 0 and case.recovery_s is not None


def test_training_killed_mid_boosting_or_after_registration_moves_no_alias_and_the_rerun_promotes(fault_home):
    before = fault_home.aliases()["champion"]
    case = rb.training_killed(fault_home)
    assert case.passed, case.detail
    assert fault_home.aliases()["champion"] not in (None, before)


def test_two_promotions_racing_in_two_processes_one_wins_and_both_are_audited(fault_home):
    case = rb.concurrent_promotions(fault_home, start_in_s=6.0)
    assert case.passed, case.detail
    rejected = history(fault_home.delta(), "flights").filter(history(fault_home.delta(), "flights")["action"] == "reject")
    stale = rejected.row(-1, named=True)
    assert stale["failed_gates"] == "stale_comparison" and "re-run the gates" in stale["reason"]


@pytest.fixture(scope="module")
def target(served, serving_registry) -> rb.Served:
    reg = serving_registry
    return rb.Served(
        served.base_url,
        reg.decl,
        serving_settings(reg),
        (reg.champion, reg.challenger),
        request_records(2),
        headers={"Authorization": f"Bearer {PREDICT_TOKEN}"},
    )


def test_a_champion_replica_killed_under_load_fails_only_requests_in_flight_and_is_replaced(target):
    """V1 goes straight to its route's own champion replicas (no gateway hand-off): a request in flight on the
    killed replica fails (a 500 from Serve's proxy), and the next ones go to the other replica."""
    case = rb.replica_killed(target, clients=2, before_s=2.0, after_s=2.0)
    assert case.passed, case.detail
    assert case.failed <= 2, case.detail  # at most one request per client was in flight
    assert case.requests > 50


def test_a_replica_killed_under_requests_through_the_gateway_fails_none(target, served):
    """The gateway asks another replica when one dies under its hand-off (pinned versions go through it, and V1
    of a pipeline without `serving.v1_route`)."""
    deployed = requests.get(f"{served.base_url}/v2/models/flights", timeout=10).json()["versions"][0]
    case = rb.replica_killed(dataclasses.replace(target, pinned=int(deployed)), clients=2, before_s=2.0, after_s=2.0)
    assert case.passed, case.detail
    assert case.failed == 0, case.detail
    assert case.requests > 50


def test_champion_swaps_under_load_fail_no_request(target):
    case = rb.champion_swaps(target, swaps=2)
    assert case.passed, case.detail
    assert case.failed == 0 and case.requests > 20


def test_a_prediction_log_store_outage_under_load_loses_no_accepted_row(target):
    case = rb.log_store_down(target, down_s=4.0)
    assert case.passed, case.detail
    assert case.rows_lost == 0 and case.failed == 0 and case.requests > 20
