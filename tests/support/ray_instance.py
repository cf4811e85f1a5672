"""The test session's one local Ray instance, shared by Ray training, batch scoring on Ray Data and Serve.

Starting Ray costs about 6 s on 2 cores, so the session starts it once, the first time a test needs it,
and shuts it down at the end. The serving tokens are set before `ray.init`: Ray's workers (Serve's
replicas among them) inherit the driver's environment as it was when Ray started.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

ADMIN_TOKEN = "test-admin-token"
PREDICT_TOKEN = "test-predict-token"
RAY_CPUS = 4  # logical: Serve's replicas and two training or scoring workers fit at once


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    import ray

    saved = {k: os.environ.get(k) for k in ("MLOPS_SERVE_ADMIN_TOKEN", "MLOPS_SERVE_TOKEN")}
    os.environ["MLOPS_SERVE_ADMIN_TOKEN"] = ADMIN_TOKEN
    os.environ["MLOPS_SERVE_TOKEN"] = PREDICT_TOKEN
    ray.init(num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False, configure_logging=False, namespace="mlops-tests")
    try:
        yield
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
