"""Schemathesis against the served OpenAPI document: requests generated from it, valid ones and invalid ones,
for every operation, through the real ingress; none may get a server error (a 5xx is a bug for a client's mistake)."""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from serving import control
from tests.support.serving import serving_settings, wait_http


@pytest.fixture(scope="module")
def api_schema(ray_serve, serving_registry):
    control.deploy_pipeline(serving_registry.decl, serving_settings(serving_registry), serving_registry.champion, None, gateway_replicas=1)
    control.wait_for_version("flights", serving_registry.champion, timeout_s=240)
    wait_http(ray_serve.base_url + "/v2/models/flights/ready")
    document = requests.get(ray_serve.base_url + "/openapi.json", timeout=10).json()
    # the document describes the real request bodies
    assert document["paths"]["/v1/models/{name}:predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    loaded = schemathesis.openapi.from_dict(document)
    loaded.config.update(base_url=ray_serve.base_url)
    return loaded


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_no_generated_request_gets_a_server_error(api_schema, mode):
    server_errors: list[str] = []
    seen: set[str] = set()

    @given(case=api_schema.as_strategy(generation_mode=mode))
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case):
        response = case.call(timeout=30)
        seen.add(f"{case.method} {case.path}")
        if response.status_code >= 500:
            server_errors.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}")

    check()
    # valid requests reach (nearly) every operation; invalid ones the operations with a body or typed parameters
    assert len(seen) >= (8 if mode == schemathesis.GenerationMode.POSITIVE else 2), seen
    assert not server_errors, "\n".join(server_errors[:10])
